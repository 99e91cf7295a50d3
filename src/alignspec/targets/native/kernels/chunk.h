// The checks of a prompt chunk's attention (prompt.cpp, prompt_amx.cpp): q [R, H, 64] fp32,
// keys and values one cache layer [KV, >= start + R, 64] of the given type, rows contiguous.

#pragma once

#include <ATen/ATen.h>

#include <cstdint>

inline void check_chunk(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                        int64_t start, at::ScalarType kv_type) {
  TORCH_CHECK(q.dim() == 3 && keys.dim() == 3 && values.dim() == 3 &&
                  q.scalar_type() == at::kFloat && keys.scalar_type() == kv_type &&
                  values.scalar_type() == kv_type,
              "fp32 q [R, H, D], keys/values [KV, L, D] of the cache's type");
  TORCH_CHECK(keys.stride(2) == 1 && values.stride(2) == 1 && keys.stride(1) == 64 &&
                  values.stride(1) == 64,
              "key/value rows must be contiguous");
  const int64_t end = start + q.size(0);
  TORCH_CHECK(q.size(1) % keys.size(0) == 0 && keys.size(1) >= end && values.size(1) >= end &&
                  start >= 0,
              "shape mismatch");
}
