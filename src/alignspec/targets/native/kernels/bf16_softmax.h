// What both bf16 prompt attentions share (prompt_amx.cpp on AMX tiles, prompt_bf16.cpp with
// AVX512-BF16 dot products): bf16 pairs as vdpbf16ps and the AMX B tiles read them, a task's
// 16 query rows packed into those pairs, and the exponential both feed into bf16
// probabilities. Sharing them keeps the two paths' roundings the same.

#pragma once

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace {

// 32 bf16: a[0], b[0], a[1], b[1], ... a[15], b[15] from two vectors of 16 floats (rounded to
// nearest even): lane i holds the pair (a[i], b[i]), one pair per 32 bits
inline __m512i interleave_bf16(__m512 a, __m512 b) {
  const __m512i ab = (__m512i)_mm512_cvtne2ps_pbh(b, a);  // a in the low half, b in the high
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9,
                                       24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
                                       16, 0);
  return _mm512_permutexvar_epi16(idx, ab);
}

// a bf16 pair (x[0], x[1]) in every lane, as vdpbf16ps reads one operand's pairs
inline __m512bh broadcast_pair(const uint16_t* x) {
  int32_t two;
  std::memcpy(&two, x, 4);
  return (__m512bh)_mm512_set1_epi32(two);
}

// lane i: first + i, the position of a task's query row i (a prompt row sees keys <= it)
inline __m512i lane_positions(int64_t first) {
  return _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(first)),
                          _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0));
}

// 16 vectors transposed in place: v[i] lane j <- v[j] lane i
inline void transpose16(__m512* v) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(v[i], v[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(v[i], v[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 2]);
    const __m512d c = _mm512_castps_pd(t[i + 1]), d = _mm512_castps_pd(t[i + 3]);
    v[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    v[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    v[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
    v[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
  }
  // v[4q + r], 128-bit lane L: rows 4q .. 4q + 3 of column 4L + r; then whole 128-bit lanes
  for (int i = 0; i < 16; i += 8)
    for (int r = 0; r < 4; ++r) {
      t[i + r] = _mm512_shuffle_f32x4(v[i + r], v[i + 4 + r], 0x88);
      t[i + 4 + r] = _mm512_shuffle_f32x4(v[i + r], v[i + 4 + r], 0xDD);
    }
  for (int r = 0; r < 4; ++r) {
    v[r] = _mm512_shuffle_f32x4(t[r], t[8 + r], 0x88);
    v[4 + r] = _mm512_shuffle_f32x4(t[4 + r], t[12 + r], 0x88);
    v[8 + r] = _mm512_shuffle_f32x4(t[r], t[8 + r], 0xDD);
    v[12 + r] = _mm512_shuffle_f32x4(t[4 + r], t[12 + r], 0xDD);
  }
}

// Rows r0 .. r0 + 15 of one head (q: fp32 rows qstride apart, times scale; rows from `valid`
// on read as 0) as 32 vectors of pairs: qt[pr] lane i = row i's dimensions 2 pr, 2 pr + 1
// (16 dimensions of the 16 rows transposed at a time: gathering them one float at a time was
// a tenth of a prompt task's samples)
inline void pack_query_pairs(const float* q, int64_t qstride, float scale, int64_t r0,
                             int64_t valid, __m512i* qt) {
  const __m512 sc = _mm512_set1_ps(scale);
  for (int64_t c = 0; c < 4; ++c) {
    __m512 v[16];
    for (int64_t i = 0; i < 16; ++i)
      v[i] = i < valid ? _mm512_mul_ps(_mm512_loadu_ps(q + (r0 + i) * qstride + 16 * c), sc)
                       : _mm512_setzero_ps();
    transpose16(v);  // v[d] lane i: row i's dimension 16 c + d
    for (int64_t p = 0; p < 8; ++p)
      _mm512_store_si512(qt + 8 * c + p, interleave_bf16(v[2 * p], v[2 * p + 1]));
  }
}

// e = 2^(log2(e) (x - best)) lane by lane, with a cubic for 2^f, f in [-0.5, 0.5] (relative
// error at most 8e-4, under the bf16 rounding of the probabilities it feeds); a hidden key's
// score of -1e30 gives an exponent of about -1.4e30, so its f is 0 and scalef returns 0
struct Exp2Cubic {
  __m512 l2e, shift;
  explicit Exp2Cubic(__m512 best)
      : l2e(_mm512_set1_ps(1.44269504088896341f)), shift(_mm512_mul_ps(best, l2e)) {}
  __m512 operator()(__m512 x) const {
    const __m512 t = _mm512_fmsub_ps(x, l2e, shift);
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    __m512 y = _mm512_fmadd_ps(_mm512_set1_ps(5.5504109e-2f), f, _mm512_set1_ps(2.4022651e-1f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(6.9314718e-1f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(y, n);
  }
};

// out rows r0 .. r0 + valid - 1 (ostride apart) = a task's transposed sums ot[d][row] over
// each row's denominator: each sum times the row's 1 / den, 16 dimensions of 16 rows
// transposed at a time (gathering a row's sums one float at a time was a tenth of a task)
inline void write_rows(const float (*ot)[16], __m512 den, int64_t r0, int64_t valid, float* out,
                       int64_t ostride) {
  const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.f), den);
  for (int64_t c = 0; c < 4; ++c) {
    __m512 v[16];
    for (int t = 0; t < 16; ++t) v[t] = _mm512_mul_ps(_mm512_load_ps(ot[c * 16 + t]), inv);
    transpose16(v);
    for (int64_t i = 0; i < valid; ++i) _mm512_storeu_ps(out + (r0 + i) * ostride + c * 16, v[i]);
  }
}

}  // namespace
#endif
