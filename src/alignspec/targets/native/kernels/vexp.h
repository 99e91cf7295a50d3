// Vector exp for the CPU kernels: the same instructions for every lane, so a value's
// exponential never depends on where in a block it sits (attention.cpp, attend512.h,
// silu.cpp).

#pragma once

#include <cmath>
#include <cstdint>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif
#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
#define ATTEND_AVX2 1
#endif

namespace {

#if defined(__AVX512F__)
inline __m512 set1(float v) { return _mm512_set1_ps(v); }

// exp(x) for the 16 lanes of x (Cephes' expf polynomial, ~1 ulp): the same instructions for
// every lane, so a score's exponential does not depend on where in a block it sits
inline __m512 exp16(__m512 x) {
  const __mmask16 tiny = _mm512_cmp_ps_mask(x, set1(-87.0f), _CMP_LT_OQ);  // exp -> exactly 0
  x = _mm512_max_ps(x, set1(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, set1(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_sub_ps(x, _mm512_mul_ps(n, set1(0.693359375f)));
  r = _mm512_sub_ps(r, _mm512_mul_ps(n, set1(-2.12194440e-4f)));
  __m512 p = set1(1.9875691500e-4f);
  p = _mm512_add_ps(_mm512_mul_ps(p, r), set1(1.3981999507e-3f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), set1(8.3334519073e-3f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), set1(4.1665795894e-2f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), set1(1.6666665459e-1f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), set1(5.0000001201e-1f));
  p = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), _mm512_add_ps(r, set1(1.f)));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~tiny), _mm512_scalef_ps(p, n));
}

#endif

#if defined(ATTEND_AVX2)
inline __m256 set8(float v) { return _mm256_set1_ps(v); }

// exp(x) for 8 lanes, x <= 0: the AVX-512 path's polynomial, with 2^n built from the exponent
// bits (n >= -126 once x is clamped to -87, so 2^n stays a normal number)
inline __m256 exp8(__m256 x) {
  const __m256 tiny = _mm256_cmp_ps(x, set8(-87.0f), _CMP_LT_OQ);  // exp -> exactly 0
  x = _mm256_max_ps(x, set8(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, set8(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_sub_ps(x, _mm256_mul_ps(n, set8(0.693359375f)));
  r = _mm256_sub_ps(r, _mm256_mul_ps(n, set8(-2.12194440e-4f)));
  __m256 p = set8(1.9875691500e-4f);
  p = _mm256_add_ps(_mm256_mul_ps(p, r), set8(1.3981999507e-3f));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), set8(8.3334519073e-3f));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), set8(4.1665795894e-2f));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), set8(1.6666665459e-1f));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), set8(5.0000001201e-1f));
  p = _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, r), r), _mm256_add_ps(r, set8(1.f)));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n),
                                                          _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(tiny, _mm256_mul_ps(p, _mm256_castsi256_ps(bits)));
}

#endif

// p[i] = exp(s[i] - best) for i < n
inline void exps(const float* s, float best, int64_t n, float* p) {
#if defined(__AVX512F__)
  const __m512 b = set1(best);
  for (int64_t i = 0; i < n; i += 16) {
    const int64_t left = n - i;
    const __mmask16 m = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1u);
    _mm512_mask_storeu_ps(p + i, m, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + i), b)));
  }
#elif defined(ATTEND_AVX2)
  const __m256 b = set8(best);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(p + i, exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), b)));
  if (i < n) {  // the tail through the same lanes, padded with -inf (exp -> 0)
    alignas(32) float tail[8];
    for (int64_t j = 0; j < 8; ++j) tail[j] = i + j < n ? s[i + j] : -INFINITY;
    _mm256_store_ps(tail, exp8(_mm256_sub_ps(_mm256_load_ps(tail), b)));
    for (int64_t j = 0; i + j < n; ++j) p[i + j] = tail[j];
  }
#else
  for (int64_t i = 0; i < n; ++i) p[i] = s[i] - best < -87.0f ? 0.f : std::exp(s[i] - best);
#endif
}

}  // namespace
