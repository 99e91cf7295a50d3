// The SwiGLU product silu(g) * u of 16 lanes, shared by silu.cpp's silu_mul and the fused
// gate/up projection of a prompt (w8a8.cpp's gate_up_silu), so both give the same bits.
// silu(g) = g / (1 + exp(-g)) through exp(-|g|), which cannot overflow.

#pragma once

#include "vexp.h"

namespace {

#if defined(__AVX512F__)
inline __m512 swiglu16(__m512 g, __m512 u) {
  const __m512 t = exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(g)));
  const __m512 den = _mm512_add_ps(set1(1.f), t);
  const __mmask16 neg = _mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_LT_OQ);
  const __m512 num = _mm512_mask_mul_ps(g, neg, g, t);
  return _mm512_mul_ps(_mm512_div_ps(num, den), u);
}
#endif

}  // namespace
