// Attention of a few new rows against the KV cache, in slot order (CPU; see attend_rows).
//
// Lossless verification of a quantised model needs a draft-tree row to come out bitwise equal
// to the same token decoded alone. Batched matmuls and torch's softmax sum over the keys in
// an order that depends on how many there are and where they sit; here every sum over keys
// is sequential in slot order, each dot product is reduced by one fixed instruction sequence
// and hidden slots weigh exactly 0, so no fp64 is needed. AVX-512 (attend512.h) or AVX2 + FMA
// where compiled in, else plain loops (same guarantees, slower).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "attend512.h"
#include "head_rows.h"
#include "rotary.h"
#include "split512.h"
#include "vexp.h"

namespace {

#if defined(ATTEND_AVX2)
// The lane sums of four vectors by one fixed sequence of adds (lanes never mix across
// vectors), as reduce4 above
inline __m128 reduce4_8(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 s01 = _mm256_add_ps(_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
  const __m256 s23 = _mm256_add_ps(_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
  const __m256d d01 = _mm256_castps_pd(s01), d23 = _mm256_castps_pd(s23);
  const __m256 lo = _mm256_castpd_ps(_mm256_unpacklo_pd(d01, d23));
  const __m256 hi = _mm256_castpd_ps(_mm256_unpackhi_pd(d01, d23));
  const __m256 s = _mm256_add_ps(lo, hi);  // each 128-bit lane: [a0 a1 a2 a3] partial sums
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}
#endif

#if defined(ATTEND_AVX2)
// Keeps a vector in a register: without it GCC folds the load into each of the four rows'
// FMAs, and the loop runs at the speed of the loads instead of the FMAs
#define IN_REGISTER(x) __asm__("" : "+x"(x))

// Four head-rows' scores for slot j with the hidden ones (mask value != 0) set to -inf
inline __m128 masked(__m128 dots, const float* const* mrow, int64_t j) {
  const __m128 m = _mm_set_ps(mrow[3] != nullptr ? mrow[3][j] : 0.f,
                              mrow[2] != nullptr ? mrow[2][j] : 0.f,
                              mrow[1] != nullptr ? mrow[1][j] : 0.f,
                              mrow[0] != nullptr ? mrow[0][j] : 0.f);
  const __m128 hidden = _mm_cmp_ps(m, _mm_setzero_ps(), _CMP_NEQ_UQ);
  return _mm_blendv_ps(dots, _mm_set1_ps(-INFINITY), hidden);
}

// head_rows for d = 64 with AVX2 + FMA. Every value is computed by the same instructions as
// the one-key-at-a-time loops this replaced (checked bitwise), in an order that suits the
// caches: scores are kept slot-major ([len][4], one 4-lane store per key), two keys per pass
// share every query load, the exponentials add up the denominators as they go (each row's
// lane in slot order), and the value sums run over chunks of slots that stay in L1 for all
// four 16-lane passes over d.
template <int NB>
void head_rows_avx2(const float* q, const float* const* mrow_in, const float* k,
                    const float* v, int64_t len, float* scores, float* const* out) {
  const float* mrow[4] = {nullptr, nullptr, nullptr, nullptr};
  bool any_mask = false;
  for (int b = 0; b < NB; ++b) {
    mrow[b] = mrow_in[b];
    any_mask = any_mask || mrow[b] != nullptr;
  }
  __m128 best = _mm_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + 2 <= len; j += 2) {
    const float* k0 = k + j * 64;
    const float* k1 = k0 + 64;
    __m256 a[4], e[4];
    for (int b = NB; b < 4; ++b) a[b] = e[b] = _mm256_setzero_ps();
    {
      __m256 x0 = _mm256_loadu_ps(k0), x1 = _mm256_loadu_ps(k1);
      IN_REGISTER(x0);
      IN_REGISTER(x1);
      for (int b = 0; b < NB; ++b) {
        const __m256 qc = _mm256_loadu_ps(q + b * 64);
        a[b] = _mm256_mul_ps(qc, x0);
        e[b] = _mm256_mul_ps(qc, x1);
      }
    }
    for (int c = 1; c < 8; ++c) {
      __m256 x0 = _mm256_loadu_ps(k0 + 8 * c), x1 = _mm256_loadu_ps(k1 + 8 * c);
      IN_REGISTER(x0);
      IN_REGISTER(x1);
      for (int b = 0; b < NB; ++b) {
        const __m256 qc = _mm256_loadu_ps(q + b * 64 + 8 * c);
        a[b] = _mm256_fmadd_ps(qc, x0, a[b]);
        e[b] = _mm256_fmadd_ps(qc, x1, e[b]);
      }
    }
    __m128 s0 = reduce4_8(a[0], a[1], a[2], a[3]);
    __m128 s1 = reduce4_8(e[0], e[1], e[2], e[3]);
    if (any_mask) {
      s0 = masked(s0, mrow, j);
      s1 = masked(s1, mrow, j + 1);
    }
    _mm_storeu_ps(scores + 4 * j, s0);
    _mm_storeu_ps(scores + 4 * j + 4, s1);
    best = _mm_max_ps(best, _mm_max_ps(s0, s1));
  }
  if (j < len) {
    const float* kr = k + j * 64;
    __m256 a[4];
    for (int b = NB; b < 4; ++b) a[b] = _mm256_setzero_ps();
    for (int b = 0; b < NB; ++b) a[b] = _mm256_mul_ps(_mm256_loadu_ps(q + b * 64), _mm256_loadu_ps(kr));
    for (int c = 1; c < 8; ++c) {
      __m256 x0 = _mm256_loadu_ps(kr + 8 * c);
      IN_REGISTER(x0);
      for (int b = 0; b < NB; ++b)
        a[b] = _mm256_fmadd_ps(_mm256_loadu_ps(q + b * 64 + 8 * c), x0, a[b]);
    }
    __m128 s0 = reduce4_8(a[0], a[1], a[2], a[3]);
    if (any_mask) s0 = masked(s0, mrow, j);
    _mm_storeu_ps(scores + 4 * j, s0);
    best = _mm_max_ps(best, s0);
  }
  // p = exp(s - best) in place, two slots per 8 lanes; den: each lane's sum in slot order
  const __m256 best8 = _mm256_set_m128(best, best);
  __m128 den = _mm_setzero_ps();
  j = 0;
  for (; j + 2 <= len; j += 2) {
    const __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + 4 * j), best8));
    _mm256_storeu_ps(scores + 4 * j, p);
    den = _mm_add_ps(den, _mm256_castps256_ps128(p));
    den = _mm_add_ps(den, _mm256_extractf128_ps(p, 1));
  }
  if (j < len) {  // the last slot through the same lanes, padded with -inf (exp -> 0)
    const __m256 x = _mm256_set_m128(_mm_set1_ps(-INFINITY), _mm_loadu_ps(scores + 4 * j));
    const __m128 p = _mm256_castps256_ps128(exp8(_mm256_sub_ps(x, best8)));
    _mm_storeu_ps(scores + 4 * j, p);
    den = _mm_add_ps(den, p);
  }
  alignas(16) float dens[4];
  _mm_store_ps(dens, den);
  // value sums: chunks of slots (16 KB of values) stay in L1 across the four passes over d
  constexpr int64_t kChunk = 64;
  alignas(32) float sums[4][64];
  for (int b = 0; b < NB; ++b)
    for (int i = 0; i < 64; ++i) sums[b][i] = 0.f;
  for (int64_t j0 = 0; j0 < len; j0 += kChunk) {
    const int64_t j1 = std::min(len, j0 + kChunk);
    for (int c = 0; c < 8; c += 2) {
      __m256 acc[NB][2];
      for (int b = 0; b < NB; ++b) {
        acc[b][0] = _mm256_load_ps(sums[b] + 8 * c);
        acc[b][1] = _mm256_load_ps(sums[b] + 8 * c + 8);
      }
      for (int64_t i = j0; i < j1; ++i) {
        const float* vr = v + i * 64 + 8 * c;
        __m256 v0 = _mm256_loadu_ps(vr), v1 = _mm256_loadu_ps(vr + 8);
        IN_REGISTER(v0);
        IN_REGISTER(v1);
        for (int b = 0; b < NB; ++b) {
          const __m256 w = _mm256_broadcast_ss(scores + 4 * i + b);
          acc[b][0] = _mm256_fmadd_ps(w, v0, acc[b][0]);
          acc[b][1] = _mm256_fmadd_ps(w, v1, acc[b][1]);
        }
      }
      for (int b = 0; b < NB; ++b) {
        _mm256_store_ps(sums[b] + 8 * c, acc[b][0]);
        _mm256_store_ps(sums[b] + 8 * c + 8, acc[b][1]);
      }
    }
  }
  for (int b = 0; b < NB; ++b) {
    const __m256 dv = set8(dens[b]);
    for (int c = 0; c < 8; ++c)
      _mm256_storeu_ps(out[b] + 8 * c, _mm256_div_ps(_mm256_load_ps(sums[b] + 8 * c), dv));
  }
}
#endif

// NB head-rows of one KV head: scores, softmax and value sums, every sum in slot order.
// q: NB rows of d (already scaled); mask rows (nullptr: all visible); out: NB rows of d.
template <int NB>
void head_rows(const float* q, const float* const* mrow, const float* k, const float* v,
               int64_t len, int64_t d, float* scores, float* const* out) {
#if defined(ATTEND_AVX2)
  if (d == 64) {
    head_rows_avx2<NB>(q, mrow, k, v, len, scores, out);
    return;
  }
#endif
  for (int b = 0; b < NB; ++b) {
    float* s = scores + b * len;
    float best = -INFINITY;
    for (int64_t j = 0; j < len; ++j) {
      float dotv = 0.f;
      for (int64_t i = 0; i < d; ++i) dotv += q[b * d + i] * k[j * d + i];
      s[j] = (mrow[b] != nullptr && mrow[b][j] != 0.f) ? -INFINITY : dotv;
      best = s[j] > best ? s[j] : best;
    }
    exps(s, best, len, s);
    std::vector<float> acc(d, 0.f);
    float total = 0.f;
    for (int64_t j = 0; j < len; ++j) {
      for (int64_t i = 0; i < d; ++i) acc[i] += s[j] * v[j * d + i];
      total += s[j];
    }
    for (int64_t i = 0; i < d; ++i) out[b][i] = acc[i] / total;
  }
}

#if defined(__AVX512F__)
// Every head-row's value_end (of its position: the number of slots it sees less one), chunks
// * 16 of them, 0 past the head-rows
std::vector<int32_t> value_ends(const float* mp, int64_t mstride, int64_t rows, int64_t groups,
                                int64_t len) {
  const int64_t hr = rows * groups, chunks = (hr + kLanes - 1) / kLanes;
  std::vector<int32_t> ends(chunks * kLanes, 0);
  for (int64_t r = 0; r < rows; ++r) {
    int64_t seen = len;
    if (mp != nullptr) {
      const float* m = mp + r * mstride;
      for (int64_t j0 = 0; j0 < len; j0 += 16) {
        const __mmask16 in = first_lanes(len - j0);
        seen -= __builtin_popcount(_mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(in, m + j0),
                                                      _mm512_setzero_ps(), _CMP_NEQ_UQ) &
                                   in);
      }
    }
    const int32_t end = static_cast<int32_t>(value_end(seen - 1));
    for (int64_t g = 0; g < groups; ++g) ends[r * groups + g] = end;
  }
  return ends;
}

// attend_core's path for head size 64 on AVX-512, for fp32 (T = float) or bf16 (T = uint16_t,
// the bits) keys and values
// ends: each head-row's value_end (value_ends; made here where nullptr and needed); with the
// AMX lanes also the transposed value blocks below the largest at vtp (KV head stride vts)
template <typename T>
void attend512_core(const float* qp, int64_t rows, int64_t heads, int64_t kv, const T* kp,
                    int64_t ks, const T* vp, int64_t vs, int64_t len, const float* mp,
                    int64_t mstride, float* op, const uint16_t* vtp = nullptr, int64_t vts = 0,
                    const int32_t* ends = nullptr) {
  const int64_t groups = heads / kv, d = 64;
  const int64_t hr = rows * groups;  // head-rows per KV head
  const int64_t chunks = (hr + kLanes - 1) / kLanes;
  const bool amx = amx_units<T>();  // every unit in lanes64's layout, on AMX tiles
  std::vector<uint16_t> hidden;
  if (mp != nullptr && (hr > kFew || amx))  // some chunk runs in lanes64's layout
    hidden = hidden_lanes(mp, mstride, rows, groups, len, chunks);
  std::vector<int32_t> own_ends;  // where none were given: none on tiles, else each row's own
  if (amx && ends == nullptr) own_ends.assign(chunks * kLanes, 0);
  if (!amx && pair_values<T>() && ends == nullptr)
    own_ends = value_ends(mp, mstride, rows, groups, len);
  Units<T> u{qp, kp, ks, vp, vs, mp, mstride, op, hidden.empty() ? nullptr : hidden.data(),
             hr, groups, heads, chunks, len, (len + 31) / 32 * 32};
  if (amx) {
    u.vtp = vtp;
    u.vts = vts;
  }
  if (amx || pair_values<T>()) u.ends = ends != nullptr ? ends : own_ends.data();
  const int64_t threads = at::get_num_threads(), units = kv * chunks;
  if (threads > 1 && len >= kSplitSlots && idle_share(units, threads) > 0.2) {
    attend_split(u, units, threads);
    return;
  }
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, len * d * 4));
  at::parallel_for(0, units, grain, [&](int64_t t0, int64_t t1) {
    float* p = scratch_floats(kLanes * u.stride);
#if defined(ATTEND_AMX)
    if constexpr (std::is_same_v<T, uint16_t>) {
      if (amx) {
        amx_configure();
        for (int64_t t = t0; t < t1; ++t) {
          const Unit<T> a = u.unit(t);
          lanes64_amx(a.q, a.nb, a.hidden, a.k, a.v, a.vt, a.end, len, p, a.orow);
        }
        _tile_release();
        return;
      }
    }
#endif
    for (int64_t t = t0; t < t1; ++t) {
      const Unit<T> a = u.unit(t);
      if (a.nb <= kFew)
        few64(a.q, a.nb, a.mrow, a.k, a.v, len, u.stride, p, a.orow, a.end);
      else
        lanes64(a.q, a.nb, a.hidden, a.k, a.v, len, p, a.orow, a.end);
    }
  });
}
#endif

// Attention of the scaled queries ``qs`` ([KV, R * groups, D]: the head-rows of each KV head)
// over slots 0 .. len - 1 of ``keys``/``values`` (rows of D contiguous, head strides ks, vs),
// written to ``out`` [R, heads * D]. ``mp``: additive mask rows of ``mstride`` (0 = visible)
// or nullptr.
void attend_core(const float* qp, int64_t rows, int64_t heads, int64_t kv, int64_t d,
                 const float* kp, int64_t ks, const float* vp, int64_t vs, int64_t len,
                 const float* mp, int64_t mstride, float* op) {
  const int64_t groups = heads / kv;
  const int64_t hr = rows * groups;  // head-rows per KV head
#if defined(__AVX512F__)
  if (d == 64) {
    attend512_core(qp, rows, heads, kv, kp, ks, vp, vs, len, mp, mstride, op);
    return;
  }
#endif
  // head-rows sharing each key and value row load: the keys and values are read once per
  // block, which at a few thousand slots (megabytes per layer) is what the call costs
  constexpr int64_t kBlock = 4;
  const int64_t block = std::min(kBlock, hr);
  const int64_t per_head = (hr + block - 1) / block;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, len * d * block));
  at::parallel_for(0, kv * per_head, grain, [&](int64_t t0, int64_t t1) {
    std::vector<float> scores(kBlock * len);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = t / per_head, b0 = (t % per_head) * block;
      const int64_t nb = std::min(block, hr - b0);
      const float* mrow[kBlock];
      float* orow[kBlock];
      head_rows_at(g, b0, nb, groups, heads, d, mp, mstride, op, mrow, orow);
      const float* qb = qp + (g * hr + b0) * d;
      const float* kh = kp + g * ks;
      const float* vh = vp + g * vs;
      switch (nb) {
        case 4: head_rows<4>(qb, mrow, kh, vh, len, d, scores.data(), orow); break;
        case 3: head_rows<3>(qb, mrow, kh, vh, len, d, scores.data(), orow); break;
        case 2: head_rows<2>(qb, mrow, kh, vh, len, d, scores.data(), orow); break;
        default: head_rows<1>(qb, mrow, kh, vh, len, d, scores.data(), orow); break;
      }
    }
  });
}

// The mask's rows, or nullptr (all visible); ``m`` keeps a contiguous copy alive.
const float* mask_rows(const c10::optional<at::Tensor>& mask, int64_t rows, int64_t len,
                       at::Tensor& m, int64_t& stride) {
  stride = 0;
  if (!mask.has_value() || !mask->defined()) return nullptr;
  m = mask->contiguous();
  TORCH_CHECK(m.scalar_type() == at::kFloat && m.dim() == 2 && m.size(0) == rows &&
                  m.size(1) >= len,
              "fp32 mask [R, >= L]");
  stride = m.size(1);
  return m.data_ptr<float>();
}

#if defined(ATTEND_AMX)
// Blocks b0 .. b1 - 1 of every KV head's values (rows of 64 at v, head stride vs) transposed
// into vt ([KV][blocks][64][32], head stride vts)
void transpose_value_blocks(const uint16_t* v, int64_t vs, int64_t kv, int64_t b0, int64_t b1,
                            uint16_t* vt, int64_t vts) {
  const int64_t slots = (b1 - b0) * 32;
  for (int64_t g = 0; g < kv; ++g)
    transpose_values(v + g * vs + b0 * 32 * 64, slots, slots, vt + g * vts + b0 * 64 * 32);
}
#endif

}  // namespace

// The deepest a draft-tree row may sit below the committed slots where a bf16 cache sums its
// older values in bf16 (attend512.h's kValueLag: AMX tiles or AVX512-BF16 pairs), else 0 (no
// limit)
int64_t attend_tree_depth() {
#if defined(__AVX512F__)
  return amx_units<uint16_t>() || pair_values<uint16_t>() ? kValueLag : 0;
#else
  return 0;
#endif
}

// Whether attend_rows and rope_attend score a bf16 cache on AMX tiles (lanes_amx.h): the
// queries are then rounded to bf16 for the scores, as the prompt's AMX attention rounds them
bool attend_bf16_amx() {
#if defined(__AVX512F__) && defined(ATTEND_AMX)
  return amx_units<uint16_t>();
#else
  return false;
#endif
}

// Whether attend_rows, rope_attend and causal_attend score a bf16 cache with bf16 queries: on
// AMX tiles, or with AVX512-BF16 dot products (attend512.h's pair_scores)
bool attend_bf16_queries() {
#if defined(__AVX512F__)
  return attend_bf16_amx() || pair_scores<uint16_t>();
#else
  return false;
#endif
}

// q [R, H, D] fp32; keys, values [KV, L, D] fp32 (rows of D contiguous, any head stride);
// mask [R, >= L] additive fp32 (0 = visible) or None. Returns [R, H * D].
//
// out[r, h] = sum_j p_j v_j / sum_j p_j, p_j = exp(s_j - max s), s_j = (q[r, h] * scale) . k_j
// over the visible slots. Each score is one dot product reduced by a fixed instruction
// sequence, a hidden slot weighs exactly 0 (adding 0 * v changes no sum), and both sums over
// slots run sequentially in slot order (with a bf16 cache on AMX or AVX512-BF16, the slots
// below the row's value_end first, in bf16, a split set by the row's position alone), so a
// row's output depends only on the keys it sees
// and their order: a draft-tree row whose ancestors sit at scattered slots with hidden
// siblings between them equals, bit for bit, the same token decoded alone after those
// ancestors were committed (tree rows are topologically ordered, so the order is the same).
at::Tensor attend_rows(at::Tensor q, at::Tensor keys, at::Tensor values,
                       c10::optional<at::Tensor> mask, double scale) {
  TORCH_CHECK(q.dim() == 3 && keys.dim() == 3 && values.dim() == 3, "q [R,H,D], k/v [KV,L,D]");
  TORCH_CHECK(q.scalar_type() == at::kFloat, "fp32 queries");
  [[maybe_unused]] const bool bf16 = bf16_cache(keys, values);  // read on AVX-512 only
  TORCH_CHECK(keys.stride(2) == 1 && values.stride(2) == 1 && keys.stride(1) == keys.size(2) &&
                  values.stride(1) == values.size(2),
              "key/value rows must be contiguous");
  const int64_t rows = q.size(0), heads = q.size(1), d = q.size(2);
  const int64_t kv = keys.size(0), len = keys.size(1), groups = heads / kv;
  TORCH_CHECK(heads % kv == 0 && values.size(1) == len && keys.size(2) == d, "shape mismatch");
  auto qs = (q * scale).view({rows, kv, groups, d}).permute({1, 0, 2, 3}).contiguous();
  at::Tensor m;
  int64_t mstride;
  const float* mp = mask_rows(mask, rows, len, m, mstride);
  auto out = at::empty({rows, heads * d}, q.options());
  if (rows == 0) return out;
#if defined(__AVX512F__)
  if (bf16) {
    TORCH_CHECK(d == 64, "a bf16 cache needs head size 64");
#if defined(ATTEND_AMX)
    if (amx_units<uint16_t>()) {  // rope_attend's arithmetic, its value blocks made here
      const std::vector<int32_t> ends = value_ends(mp, mstride, rows, groups, len);
      const int64_t blocks = len / 32;
      std::vector<uint16_t> vt(std::max<int64_t>(1, kv * blocks * 64 * 32));
      transpose_value_blocks(bf16_data(values), values.stride(0), kv, 0, blocks, vt.data(),
                             blocks * 64 * 32);
      attend512_core(qs.data_ptr<float>(), rows, heads, kv, bf16_data(keys), keys.stride(0),
                     bf16_data(values), values.stride(0), len, mp, mstride,
                     out.data_ptr<float>(), vt.data(), blocks * 64 * 32, ends.data());
      return out;
    }
#endif
    attend512_core(qs.data_ptr<float>(), rows, heads, kv, bf16_data(keys), keys.stride(0),
                   bf16_data(values), values.stride(0), len, mp, mstride,
                   out.data_ptr<float>());
    return out;
  }
#endif
  attend_core(qs.data_ptr<float>(), rows, heads, kv, d, keys.data_ptr<float>(), keys.stride(0),
              values.data_ptr<float>(), values.stride(0), len, mp, mstride,
              out.data_ptr<float>());
  return out;
}

// One decode/verify layer's attention from its fused projection, in one call: the rows'
// keys are rotated and written with their values to cache slots start .. start + R - 1,
// the queries rotated and scaled, and attend_rows' attention run over slots < start + R.
// qkv [R, H + 2 KV, D]; cos, sin [R, D] (RopeTables' rows for the rows' positions);
// keys, values: one layer of the cache, [KV, capacity, D] with contiguous rows.
// The rotation is rope.py's arithmetic, so these keys equal the prefill's bit for bit.
//
// values_t, vt_done: with a bf16 cache on AMX tiles, the layer's transposed value blocks
// [KV, blocks, 64, 32] of which the first vt_done are up to date: blocks vt_done ..
// start / 32 - 1 (committed by now) are transposed here, and the tiles sum blocks below
// each row's amx_value_end. Without them the blocks are transposed per call (same bits).
at::Tensor rope_attend(at::Tensor qkv, at::Tensor cos, at::Tensor sin, at::Tensor keys,
                       at::Tensor values, int64_t start, int64_t heads,
                       c10::optional<at::Tensor> mask, double scale,
                       c10::optional<at::Tensor> values_t, int64_t vt_done) {
  const bool bf16 = check_qkv_cache(qkv, keys, values);
  TORCH_CHECK(!bf16 || qkv.size(2) == 64, "a bf16 cache needs head size 64");
  const int64_t rows = qkv.size(0), d = qkv.size(2), kv = keys.size(0);
  const int64_t len = start + rows, groups = heads / kv;
  TORCH_CHECK(heads % kv == 0 && qkv.size(1) == heads + 2 * kv && keys.size(2) == d &&
                  values.size(1) >= len && keys.size(1) >= len && start >= 0,
              "shape mismatch");
  cos = cos.contiguous();
  sin = sin.contiguous();
  TORCH_CHECK(cos.numel() == rows * d && sin.numel() == rows * d, "cos/sin [R, D]");
  at::Tensor m;
  int64_t mstride;
  const float* mp = mask_rows(mask, rows, len, m, mstride);
  const float* x = qkv.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  const int64_t ks = keys.stride(0), vs = values.stride(0), width = (heads + 2 * kv) * d;
  std::vector<float> qs(kv * rows * groups * d);  // [KV, R * groups, D], as attend_core reads
  std::vector<float> key(d);
  const auto write = [&](auto* kp, auto* vp) {
    for (int64_t r = 0; r < rows; ++r) {
      const auto q_at = [&](int64_t h) {  // [KV, R * groups, D], as attend_core reads
        return qs.data() + ((h / groups) * rows * groups + r * groups + h % groups) * d;
      };
      rotate_row(x + r * width, cp + r * d, sp + r * d, heads, kv, d, static_cast<float>(scale),
                 q_at, kp, ks, vp, vs, start + r, key.data());
    }
  };
  auto out = at::empty({rows, heads * d}, qkv.options());
#if defined(__AVX512F__)
  if (bf16) {
    uint16_t* kp = bf16_data(keys);
    uint16_t* vp = bf16_data(values);
    write(kp, vp);
    if (rows == 0) return out;
#if defined(ATTEND_AMX)
    if (amx_units<uint16_t>()) {
      // without the cache's transposed blocks (a direct call) they are made here, as
      // attend_rows makes them: the same arithmetic, so the same bits (the AMX lanes read
      // them for every row whose value blocks have begun)
      std::vector<uint16_t> own;
      uint16_t* vtp;
      int64_t vts, done = 0;
      if (values_t.has_value() && values_t->defined()) {
        at::Tensor& vt = *values_t;
        TORCH_CHECK(vt.scalar_type() == at::kBFloat16 && vt.is_contiguous() && vt.dim() == 4 &&
                        vt.size(0) == kv && vt.size(2) == 64 && vt.size(3) == 32 &&
                        vt.size(1) >= start / 32 && vt_done >= 0,
                    "values_t: [KV, >= start / 32, 64, 32] bf16");
        vtp = reinterpret_cast<uint16_t*>(vt.data_ptr<at::BFloat16>());
        vts = vt.stride(0);
        done = std::min(vt_done, start / 32);
      } else {
        vts = start / 32 * 64 * 32;
        own.resize(std::max<int64_t>(1, kv * vts));
        vtp = own.data();
      }
      transpose_value_blocks(vp, vs, kv, done, start / 32, vtp, vts);
      const std::vector<int32_t> ends = value_ends(mp, mstride, rows, groups, len);
      TORCH_CHECK(*std::max_element(ends.begin(), ends.end()) <= start / 32 * 32,
                  "a draft-tree row sits more than ", kValueLag,
                  " tokens below the committed ones (NativeTarget.max_tree_depth)");
      attend512_core<uint16_t>(qs.data(), rows, heads, kv, kp, ks, vp, vs, len, mp, mstride,
                               out.data_ptr<float>(), vtp, vts, ends.data());
      return out;
    }
#endif
    if constexpr (pair_values<uint16_t>()) {
      const std::vector<int32_t> ends = value_ends(mp, mstride, rows, groups, len);
      TORCH_CHECK(*std::max_element(ends.begin(), ends.end()) <= start / 32 * 32,
                  "a draft-tree row sits more than ", kValueLag,
                  " tokens below the committed ones (NativeTarget.max_tree_depth)");
      attend512_core<uint16_t>(qs.data(), rows, heads, kv, kp, ks, vp, vs, len, mp, mstride,
                               out.data_ptr<float>(), nullptr, 0, ends.data());
      return out;
    }
    attend512_core<uint16_t>(qs.data(), rows, heads, kv, kp, ks, vp, vs, len, mp, mstride,
                             out.data_ptr<float>());
    return out;
  }
#endif
  float* kp = keys.data_ptr<float>();
  float* vp = values.data_ptr<float>();
  write(kp, vp);
  if (rows == 0) return out;
  attend_core(qs.data(), rows, heads, kv, d, kp, ks, vp, vs, len, mp, mstride,
              out.data_ptr<float>());
  return out;
}
