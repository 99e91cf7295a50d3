// The int8 decoder's layers run in one call (layers.cpp); declared for module.cpp's binding.

#pragma once

#include <ATen/ATen.h>

#include <vector>

// One int8 projection as W8A8Linear holds it for the kernel
struct Projection {
  at::Tensor packed, colsum, scale;
  c10::optional<at::Tensor> bias;
  int64_t out_features;
};

struct Layer {
  at::Tensor attn_norm, mlp_norm;
  Projection qkv, o, gate_up, down;
};

class DecoderStack {
 public:
  // ``flat``: per layer, attn_norm, mlp_norm, then (packed, colsum, scale, bias) for qkv, o,
  // gate_up and down (an empty bias tensor: none)
  DecoderStack(const std::vector<at::Tensor>& flat, at::Tensor final_norm, int64_t heads,
               int64_t kv_heads, int64_t head_dim, double eps, double scale);
  at::Tensor forward(at::Tensor x, at::Tensor h, at::Tensor cos, at::Tensor sin,
                     at::Tensor keys, at::Tensor values, int64_t start,
                     c10::optional<at::Tensor> mask, c10::optional<at::Tensor> values_t,
                     int64_t vt_done) const;

 private:
  std::vector<Layer> layers_;
  at::Tensor final_norm_;
  int64_t heads_, kv_heads_, head_dim_;
  double eps_, scale_;
};
