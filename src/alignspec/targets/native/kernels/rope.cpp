// A prompt chunk's rotary embedding and KV-cache write in one pass (CPU).
//
// Through torch this was a concatenation, two multiplies, an addcmul and two strided cache
// copies per layer: 73 of 880 ms of a 2,000-token int8 prefill. Here each row is rotated and
// stored once, rows split across threads. The rotation and the cache rounding are the decode
// kernel's (rotary.h), which equal rope.py's torch arithmetic bit for bit, so a prompt's keys
// are the bits that decoding it token by token would write.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <vector>

#include "rotary.h"

// qkv [R, H + 2 KV, D] fp32 contiguous; cos, sin [R, D] (RopeTables' rows for the rows'
// positions); keys, values: one layer of the cache, [KV, capacity, D] with contiguous rows.
// Writes the rows' rotated keys and their values to slots start .. start + R - 1 and returns
// the rotated queries [R, H, D] (unscaled, as rope.py returns them).
at::Tensor rope_write(at::Tensor qkv, at::Tensor cos, at::Tensor sin, at::Tensor keys,
                      at::Tensor values, int64_t start, int64_t heads) {
  const bool bf16 = check_qkv_cache(qkv, keys, values);
  const int64_t rows = qkv.size(0), d = qkv.size(2), kv = keys.size(0);
  TORCH_CHECK(qkv.size(1) == heads + 2 * kv && keys.size(2) == d && start >= 0 &&
                  keys.size(1) >= start + rows && values.size(1) >= start + rows,
              "shape mismatch");
  cos = cos.contiguous();
  sin = sin.contiguous();
  TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat &&
                  cos.numel() == rows * d && sin.numel() == rows * d,
              "fp32 cos/sin [R, D]");
  auto q = at::empty({rows, heads, d}, qkv.options());
  const float* x = qkv.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  float* qp = q.data_ptr<float>();
  const int64_t ks = keys.stride(0), vs = values.stride(0), width = (heads + 2 * kv) * d;
  const auto write = [&](auto* kp, auto* vp) {
    at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
      std::vector<float> key(d);
      for (int64_t r = r0; r < r1; ++r) {
        const auto q_at = [&](int64_t h) { return qp + (r * heads + h) * d; };
        rotate_row(x + r * width, cp + r * d, sp + r * d, heads, kv, d, 1.0f, q_at, kp, ks, vp,
                   vs, start + r, key.data());
      }
    });
  };
  if (bf16) {
    write(bf16_data(keys), bf16_data(values));
  } else {
    write(keys.data_ptr<float>(), values.data_ptr<float>());
  }
  return q;
}
