// Rotary embedding and KV-cache rows shared by the decode (attention.cpp) and prompt (rope.cpp)
// paths, so a key either path writes is the same bits.

#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

// x rotated by the angles of one position (cos, signed sin: RopeTables' layout) in the
// roundings of rope.py's addcmul as torch's vectorised CPU kernel computes it:
// fma(swap_halves(x), signed_sin, x * cos)
inline void rotate(const float* x, const float* cos, const float* sin, int64_t d, float scale,
                   float* out) {
  const int64_t half = d / 2;
#if defined(__AVX512F__)
  if (half % 16 == 0) {  // the same operations, 16 lanes at a time
    const __m512 sc = _mm512_set1_ps(scale);
    for (int64_t i = 0; i < half; i += 16) {
      const __m512 lo = _mm512_loadu_ps(x + i), hi = _mm512_loadu_ps(x + half + i);
      const __m512 a = _mm512_fmadd_ps(hi, _mm512_loadu_ps(sin + i),
                                       _mm512_mul_ps(lo, _mm512_loadu_ps(cos + i)));
      const __m512 b = _mm512_fmadd_ps(lo, _mm512_loadu_ps(sin + half + i),
                                       _mm512_mul_ps(hi, _mm512_loadu_ps(cos + half + i)));
      _mm512_storeu_ps(out + i, _mm512_mul_ps(a, sc));
      _mm512_storeu_ps(out + half + i, _mm512_mul_ps(b, sc));
    }
    return;
  }
#endif
  for (int64_t i = 0; i < d; ++i) {
    const float swapped = i < half ? x[i + half] : x[i - half];
    out[i] = std::fma(swapped, sin[i], x[i] * cos[i]) * scale;
  }
}

// fp32 -> bf16 bits, rounded to nearest even as torch rounds (NaN to its quiet NaN), so a
// key the kernel writes equals the one the prefill's torch copy writes
inline uint16_t bf16_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  if (std::isnan(f)) return 0x7FC0;
  b += 0x7FFF + ((b >> 16) & 1);
  return static_cast<uint16_t>(b >> 16);
}

inline void store_row(const float* x, int64_t d, float* dst) {
  std::memcpy(dst, x, d * sizeof(float));
}
inline void store_row(const float* x, int64_t d, uint16_t* dst) {
  int64_t i = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
  for (; i + 16 <= d; i += 16) {  // bf16_bits 16 lanes at a time
    const __m512 f = _mm512_loadu_ps(x + i);
    const __m512i b = _mm512_castps_si512(f);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(b, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), odd)), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q),
                              _mm512_set1_epi32(0x7FC0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm512_cvtepi32_epi16(r));
  }
#endif
  for (; i < d; ++i) dst[i] = bf16_bits(x[i]);
}

inline bool bf16_cache(const at::Tensor& keys, const at::Tensor& values) {
  const bool bf16 = keys.scalar_type() == at::kBFloat16;
  TORCH_CHECK((bf16 || keys.scalar_type() == at::kFloat) &&
                  values.scalar_type() == keys.scalar_type(),
              "fp32 or bf16 keys and values, alike");
#if !defined(__AVX512F__)
  TORCH_CHECK(!bf16, "a bf16 cache needs the AVX-512 build");
#endif
  return bf16;
}

// The checks a layer's fused projection and its cache layer must pass; returns whether the
// cache is bf16. qkv [R, H + 2 KV, D] fp32 contiguous; keys, values [KV, capacity, D].
inline bool check_qkv_cache(const at::Tensor& qkv, const at::Tensor& keys,
                            const at::Tensor& values) {
  TORCH_CHECK(qkv.dim() == 3 && qkv.scalar_type() == at::kFloat && qkv.is_contiguous(),
              "contiguous fp32 qkv [R, H + 2 KV, D]");
  TORCH_CHECK(keys.dim() == 3 && values.dim() == 3 && keys.stride(2) == 1 &&
                  values.stride(2) == 1 && keys.stride(1) == keys.size(2) &&
                  values.stride(1) == values.size(2),
              "cache layers [KV, capacity, D] with contiguous rows");
  return bf16_cache(keys, values);
}

// One row of a fused projection (xr: H query, KV key and KV value heads of D) at the angles
// cr/sr: the queries rotated and scaled to q_at(h), the keys rotated and the values copied to
// cache slot ``slot`` (KV heads ks/vs apart). ``key`` is D floats of scratch.
template <typename T, typename QAt>
inline void rotate_row(const float* xr, const float* cr, const float* sr, int64_t heads,
                       int64_t kv, int64_t d, float scale, QAt q_at, T* kp, int64_t ks, T* vp,
                       int64_t vs, int64_t slot, float* key) {
  for (int64_t h = 0; h < heads; ++h) rotate(xr + h * d, cr, sr, d, scale, q_at(h));
  for (int64_t g = 0; g < kv; ++g) {
    rotate(xr + (heads + g) * d, cr, sr, d, 1.0f, key);
    store_row(key, d, kp + g * ks + slot * d);
    store_row(xr + (heads + kv + g) * d, d, vp + g * vs + slot * d);
  }
}

// a bf16 tensor's data as the bits the AVX-512 attention reads
inline uint16_t* bf16_data(at::Tensor& t) {
  return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>());
}

}  // namespace
