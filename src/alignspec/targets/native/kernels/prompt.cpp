// Attention of a prompt chunk (prefill) on AVX-512 for head dimension 64, every row in the
// arithmetic of attend_rows' few64: a prompt row's attention comes out bitwise what it would
// be if the row were decoded alone after the rows before it, so a prefilled prompt and the same
// prompt decoded token by token leave the same cache and the same outputs. Unlike attend_rows
// it transposes each KV head's keys once per call and shares them by every head-row, and
// skips the keys each row cannot see (causal), so it costs what the dense products cost.
// The cache holds fp32 or bf16 keys and values; bf16 ones widen to fp32 exactly on load, as
// attend_rows widens them, so the arithmetic after the loads is the same for both, except that
// a bf16 cache is scored as attend_rows scores it (pair_scores: bf16 dimension pairs where the
// CPU has AVX512-BF16).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "attend512.h"
#include "chunk.h"

namespace {

#if defined(__AVX512F__)
// nb (<= kMaxRows) head-rows q (scaled: [nb][64] fp32, or [nb][32] bf16 pairs where
// pair_scores); head-row b sees slots 0 .. ends[b] - 1. kt: the KV head's keys transposed
// alike in tiles of 32 ([tiles][64 or 32][32]); p: scratch of nb * stride floats. Each tile of
// keys, and each chunk of values, is read once for all nb head-rows: at 8,000 cached tokens a
// KV head's keys and values (4 MB) no longer fit in L2.
template <typename T, typename Q>
void causal_rows(const Q* q, int64_t nb, const int64_t* ends, const Q* kt, const T* v,
                 int64_t stride, float* p, float* const* out) {
  constexpr int64_t words = std::is_same_v<Q, float> ? 64 : 32;
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  const int64_t len = *std::max_element(ends, ends + nb);
  __m512 best[kMaxRows];
  for (int64_t b = 0; b < nb; ++b) best[b] = ninf;
  const auto visible = [&](int64_t b, int64_t j0) { return first_lanes(ends[b] - j0); };
  for (int64_t j = 0; j < len; j += 32)
    tile_scores(q, nb, kt + (j / 32) * words * 32, j, len, visible, best, p, stride);
  softmax_values(p, stride, nb, best, v, len, out);
}
#endif

}  // namespace

// Whether causal_attend runs for head dimension d on this build (AVX-512, d = 64).
bool causal_attend_ok(int64_t d) {
#if defined(__AVX512F__)
  return d == 64;
#else
  (void)d;
  return false;
#endif
}

#if defined(__AVX512F__)
namespace {

// causal_attend for a cache of type T (float, or uint16_t: bf16 bits); out [R, H * 64]
template <typename T>
void causal_attend_cache(const at::Tensor& q, const T* kp, int64_t ks, const T* vp, int64_t vs,
                         int64_t kv, int64_t start, double scale, at::Tensor& out) {
  const int64_t rows = q.size(0), heads = q.size(1);
  const int64_t end = start + rows, groups = heads / kv;
  auto qs = (q * scale).view({rows, kv, groups, 64}).permute({1, 0, 2, 3}).contiguous();
  const int64_t tiles = (end + 31) / 32, stride = tiles * 32;
  constexpr bool bf16_pairs = pair_scores<T>();
  using Q = std::conditional_t<bf16_pairs, uint32_t, float>;  // a query's and a tile's words
  constexpr int64_t words = bf16_pairs ? 32 : 64;
  auto kt = at::empty({kv, tiles, words, 32},
                      q.options().dtype(bf16_pairs ? at::kInt : at::kFloat));
  Q* ktp = reinterpret_cast<Q*>(kt.data_ptr());
  at::parallel_for(0, kv * tiles, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = t / tiles, j = (t % tiles) * 32;
      const int64_t lo = std::min<int64_t>(16, end - j);
      const int64_t hi = std::clamp<int64_t>(end - j - 16, 0, 16);
      Q* dst = ktp + t * words * 32;
#if defined(ATTEND_DPBF16)
      if constexpr (bf16_pairs) {
        transpose_pairs(kp + g * ks + j * 64, lo, dst);
        transpose_pairs(kp + g * ks + (j + 16) * 64, hi, dst + 16);
        continue;
      }
#endif
      if constexpr (!bf16_pairs) {
        transpose_keys(kp + g * ks + j * 64, lo, dst);
        transpose_keys(kp + g * ks + (j + 16) * 64, hi, dst + 16);
      }
    }
  });
  // blocks of up to kMaxRows head-rows (in qs' order: row-major, then the group), paired
  // first with last so that every task attends to about the same number of keys
  const int64_t hr = rows * groups, blocks = (hr + kMaxRows - 1) / kMaxRows;
  const int64_t pairs = (blocks + 1) / 2;
  const float* qp = qs.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, kv * pairs, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> scratch(kMaxRows * stride + 16);
    float* p = reinterpret_cast<float*>(
        (reinterpret_cast<uintptr_t>(scratch.data()) + 63) & ~uintptr_t(63));
    const auto run = [&](int64_t g, int64_t blk) {
      const int64_t b0 = blk * kMaxRows, nb = std::min<int64_t>(kMaxRows, hr - b0);
      int64_t ends[kMaxRows];
      float* orow[kMaxRows];
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t r = (b0 + b) / groups, head = g * groups + (b0 + b) % groups;
        ends[b] = start + r + 1;
        orow[b] = op + (r * heads + head) * 64;
      }
      const float* qb = qp + (g * hr + b0) * 64;
      const Q* kh = ktp + g * tiles * words * 32;
#if defined(ATTEND_DPBF16)
      if constexpr (bf16_pairs) {
        alignas(64) uint32_t qpairs[kMaxRows * 32];
        pack_pairs(qb, nb, qpairs);
        causal_rows(qpairs, nb, ends, kh, vp + g * vs, stride, p, orow);
        return;
      }
#endif
      if constexpr (!bf16_pairs) causal_rows(qb, nb, ends, kh, vp + g * vs, stride, p, orow);
    };
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = t / pairs, i = t % pairs;
      run(g, i);
      if (blocks - 1 - i != i) run(g, blocks - 1 - i);
    }
  });
}

}  // namespace
#endif

// q [R, H, 64] fp32 (rotated, not scaled): a prompt chunk at cache slots start .. start + R - 1
// whose keys and values are already written; keys, values: one cache layer [KV, >= start + R,
// 64] with contiguous rows, fp32 or bf16 alike. Row r sees slots 0 .. start + r. Returns
// [R, H * 64].
at::Tensor causal_attend(at::Tensor q, at::Tensor keys, at::Tensor values, int64_t start,
                         double scale) {
  const bool bf16 = keys.scalar_type() == at::kBFloat16;
  check_chunk(q, keys, values, start, bf16 ? at::kBFloat16 : at::kFloat);
  TORCH_CHECK(causal_attend_ok(q.size(2)), "causal_attend needs AVX-512 and D = 64");
  auto out = at::empty({q.size(0), q.size(1) * 64}, q.options());
  if (q.size(0) == 0) return out;
#if defined(__AVX512F__)
  const int64_t kv = keys.size(0);
  if (bf16) {
    const auto bits = [](at::Tensor& t) {
      return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>());
    };
    causal_attend_cache(q, bits(keys), keys.stride(0), bits(values), values.stride(0), kv, start,
                        scale, out);
  } else {
    causal_attend_cache(q, keys.data_ptr<float>(), keys.stride(0), values.data_ptr<float>(),
                        values.stride(0), kv, start, scale, out);
  }
#else
  (void)start;
  (void)scale;
#endif
  return out;
}
