// A prompt chunk's causal attention in bf16 with AVX512-BF16 dot products (head dimension 64):
// causal_attend_bf16 where the CPU has AVX512-BF16 but no AMX (AMD Zen 4, Intel Cooper Lake).
//
// The same rounding as the AMX version (prompt_amx.cpp) and torch's bf16 SDPA: queries (scaled),
// keys, values and probabilities are bf16, every sum fp32. vdpbf16ps multiplies 32 bf16 pairs
// into 16 fp32 sums per instruction, twice the products of an fp32 FMA: on a 2-core AMD EPYC
// the fp32 kernel (causal_attend) took 43% of a 2,048-token int8 prefill.
//
// A task is 16 query rows of one head, one row per lane, as on AMX: a key's 16 scores are one
// vector (32 dot-product steps over the dimension pairs), the softmax runs lane-wise down the
// keys, and the output is accumulated transposed (dimension x row) over pairs of keys, from
// values interleaved in pairs of keys once per call.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "bf16_softmax.h"
#include "chunk.h"

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#define PROMPT_DPBF16 1
#include <immintrin.h>
#endif

namespace {

#if defined(PROMPT_DPBF16)
constexpr int64_t kRows = 16;  // query rows per task, one per lane
constexpr int64_t kKeys = 8;   // keys scored at once (independent dot-product chains)

// One KV head's values in pairs of keys: vp[jp][d] = v[2 jp][d] | v[2 jp + 1][d] << 16 for
// keys below len, 0 for the rest up to pairs (a key past len never read from the cache).
void pair_values(const uint16_t* v, int64_t len, int64_t pairs, uint32_t* vp) {
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t jp = 0; jp < pairs; ++jp) {
    const int64_t j = 2 * jp;
    for (int64_t c = 0; c < 4; ++c) {
      const __m512i lo =
          j < len ? _mm512_cvtepu16_epi32(_mm256_loadu_si256(
                        reinterpret_cast<const __m256i*>(v + j * 64 + c * 16)))
                  : zero;
      const __m512i hi =
          j + 1 < len ? _mm512_cvtepu16_epi32(_mm256_loadu_si256(
                            reinterpret_cast<const __m256i*>(v + (j + 1) * 64 + c * 16)))
                      : zero;
      _mm512_storeu_si512(vp + jp * 64 + c * 16, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
  }
}

// Rows r0 .. r0 + 15 of one head (q: [rows][heads * 64] fp32 rows, times scale: the chunk's
// rows at slots start ..) against one KV head's keys k ([>= end][64] bf16) and paired values
// vp (pair_values). s: scratch of 16 floats per key; p: of 16 pairs per pair of keys.
void task(const float* q, int64_t qstride, float scale, int64_t rows, int64_t r0,
          const uint16_t* k, const uint32_t* vp, int64_t start, float* s, __m512bh* p,
          float* out, int64_t ostride) {
  const int64_t valid = std::min<int64_t>(kRows, rows - r0);
  const int64_t len = std::min(start + r0 + kRows, start + rows);  // keys any row sees
  __m512i qt[32];  // qt[pr] lane i: row i's dimensions 2 pr, 2 pr + 1
  pack_query_pairs(q, qstride, scale, r0, valid, qt);
  // scores, kKeys at a time (each key's 16 scores one chain over the 32 pairs); row i sees
  // key j iff j <= start + r0 + i
  const __m512i pos = lane_positions(start + r0);
  const int64_t diag = start + r0;  // keys below it every row sees
  // a hidden key's score: finite, so that its exponential comes out 0 without a mask
  const __m512 hide = _mm512_set1_ps(-1e30f);
  __m512 best = hide;
  int64_t j = 0;
  for (; j + kKeys <= len; j += kKeys) {
    __m512 acc[kKeys];
    for (int64_t t = 0; t < kKeys; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t pr = 0; pr < 32; ++pr)
      for (int64_t t = 0; t < kKeys; ++t)
        acc[t] = _mm512_dpbf16_ps(acc[t], (__m512bh)qt[pr], broadcast_pair(k + (j + t) * 64 + 2 * pr));
    for (int64_t t = 0; t < kKeys; ++t) _mm512_store_ps(s + (j + t) * kRows, acc[t]);
  }
  for (; j < len; ++j) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t pr = 0; pr < 32; ++pr)
      acc = _mm512_dpbf16_ps(acc, (__m512bh)qt[pr], broadcast_pair(k + j * 64 + 2 * pr));
    _mm512_store_ps(s + j * kRows, acc);
  }
  for (j = 0; j < std::min(len, diag); ++j) best = _mm512_max_ps(best, _mm512_load_ps(s + j * kRows));
  for (j = diag; j < len; ++j) {
    const __mmask16 see = _mm512_cmpge_epi32_mask(pos, _mm512_set1_epi32(static_cast<int>(j)));
    const __m512 x = _mm512_mask_mov_ps(hide, see, _mm512_load_ps(s + j * kRows));
    _mm512_store_ps(s + j * kRows, x);
    best = _mm512_max_ps(best, x);
  }
  const Exp2Cubic exp2(best);
  __m512 den = _mm512_setzero_ps();
  const __m512 zero = _mm512_setzero_ps();
  const int64_t pairs = (len + 1) / 2;
  for (int64_t jp = 0; jp < pairs; ++jp) {
    const int64_t i = 2 * jp;
    const __m512 e0 = exp2(_mm512_load_ps(s + i * kRows));
    const __m512 e1 = i + 1 < len ? exp2(_mm512_load_ps(s + (i + 1) * kRows)) : zero;
    den = _mm512_add_ps(_mm512_add_ps(den, e0), e1);
    p[jp] = (__m512bh)interleave_bf16(e0, e1);
  }
  // O^T = V^T P^T, 16 dimensions at a time: ot[d][i] over the pairs of keys
  alignas(64) float ot[64][kRows];
  for (int64_t c = 0; c < 4; ++c) {
    __m512 acc[16];
    for (int64_t t = 0; t < 16; ++t) acc[t] = _mm512_setzero_ps();
    const uint32_t* vc = vp + c * 16;
    for (int64_t jp = 0; jp < pairs; ++jp) {
      const __m512bh pj = p[jp];
      const uint32_t* vrow = vc + jp * 64;
      for (int64_t t = 0; t < 16; ++t)
        acc[t] = _mm512_dpbf16_ps(acc[t], pj, (__m512bh)_mm512_set1_epi32(static_cast<int>(vrow[t])));
    }
    for (int64_t t = 0; t < 16; ++t) _mm512_store_ps(ot[c * 16 + t], acc[t]);
  }
  write_rows(ot, den, r0, valid, out, ostride);
}
#endif

}  // namespace

// Whether causal_attend_dpbf16 runs here: AVX512-BF16 compiled in, head dimension 64.
bool causal_attend_dpbf16_ok(int64_t d) {
#if defined(PROMPT_DPBF16)
  return d == 64;
#else
  (void)d;
  return false;
#endif
}

// causal_attend_bf16's arguments and result (see prompt_amx.cpp), on AVX512-BF16
at::Tensor causal_attend_dpbf16(at::Tensor q, at::Tensor keys, at::Tensor values, int64_t start,
                                double scale) {
  check_chunk(q, keys, values, start, at::kBFloat16);
  TORCH_CHECK(causal_attend_dpbf16_ok(q.size(2)), "needs AVX512-BF16 and D = 64");
  const int64_t rows = q.size(0), heads = q.size(1);
  auto out = at::empty({rows, heads * 64}, q.options());
  if (rows == 0) return out;
#if defined(PROMPT_DPBF16)
  const int64_t kv = keys.size(0), end = start + rows, groups = heads / kv;
  auto qs = q.contiguous();
  const int64_t pairs = (end + 1) / 2;
  auto vpt = at::empty({kv, pairs, 64}, keys.options().dtype(at::kInt));
  const auto* kp = reinterpret_cast<const uint16_t*>(keys.data_ptr<at::BFloat16>());
  const auto* vp = reinterpret_cast<const uint16_t*>(values.data_ptr<at::BFloat16>());
  auto* vpp = reinterpret_cast<uint32_t*>(vpt.data_ptr<int32_t>());
  const int64_t ks = keys.stride(0), vs = values.stride(0);
  at::parallel_for(0, kv, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) pair_values(vp + g * vs, end, pairs, vpp + g * pairs * 64);
  });
  // tasks (head, block of 16 rows), blocks paired first with last so that every pair of
  // tasks attends to about the same number of keys
  const int64_t blocks = (rows + kRows - 1) / kRows, bpairs = (blocks + 1) / 2;
  const float* qp = qs.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, heads * bpairs, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> sbuf((end + kKeys) * kRows + 16);
    std::vector<__m512bh> pbuf(pairs + 1);
    float* s = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(sbuf.data()) + 63) &
                                        ~uintptr_t(63));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t h = t / bpairs, i = t % bpairs, g = h / groups;
      for (const int64_t blk : {i, blocks - 1 - i}) {
        task(qp + h * 64, heads * 64, static_cast<float>(scale), rows, blk * kRows,
             kp + g * ks, vpp + g * pairs * 64, start, s, pbuf.data(), op + h * 64, heads * 64);
        if (blocks - 1 - i == i) break;
      }
    }
  });
#else
  (void)start;
  (void)scale;
#endif
  return out;
}
