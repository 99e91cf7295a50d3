// Rotary embedding and KV-cache rows shared by the decode (attention.cpp) and prompt (rope.cpp)
// paths, so a key either path writes is the same bits.

#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

// x rotated by the angles of one position (cos, signed sin: RopeTables' layout) in the
// roundings of rope.py's addcmul as torch's vectorised CPU kernel computes it:
// fma(swap_halves(x), signed_sin, x * cos)
inline void rotate(const float* x, const float* cos, const float* sin, int64_t d, float scale,
                   float* out) {
  const int64_t half = d / 2;
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
  for (int64_t i = 0; i < d; ++i) dst[i] = bf16_bits(x[i]);
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

// a bf16 tensor's data as the bits the AVX-512 attention reads
inline uint16_t* bf16_data(at::Tensor& t) {
  return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>());
}

}  // namespace
