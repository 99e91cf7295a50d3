// Every layer of the int8 decoder in one call (CPU): the same kernel calls, in the same order
// and on the same tensors, as model.py's per-layer loop, so the same bits.
//
// From Python a layer is seven kernel calls, each a pybind crossing with its argument checks
// and the attribute lookups around it: about 0.8 ms of a 7 ms one-row int8 forward on a
// 2-core Xeon. Here the loop, the views of each layer's cache and the choice of the next norm
// run in C++; a forward is one crossing.

#include "layers.h"

#include <utility>

at::Tensor linear(at::Tensor x, at::Tensor packed, at::Tensor colsum, at::Tensor w_scale,
                  c10::optional<at::Tensor> bias, int64_t n);
at::Tensor rope_attend(at::Tensor qkv, at::Tensor cos, at::Tensor sin, at::Tensor keys,
                       at::Tensor values, int64_t start, int64_t heads,
                       c10::optional<at::Tensor> mask, double scale,
                       c10::optional<at::Tensor> values_t, int64_t vt_done);
at::Tensor silu_mul(at::Tensor gu);
at::Tensor add_rms_norm_(at::Tensor x, at::Tensor delta, at::Tensor w, double eps);

namespace {

Projection projection(const std::vector<at::Tensor>& flat, size_t at) {
  const at::Tensor& bias = flat[at + 3];
  return Projection{flat[at], flat[at + 1], flat[at + 2],
                    bias.numel() ? c10::optional<at::Tensor>(bias) : c10::nullopt,
                    flat[at + 2].numel()};
}

at::Tensor apply(const Projection& p, const at::Tensor& x) {
  return linear(x, p.packed, p.colsum, p.scale, p.bias, p.out_features);
}

constexpr size_t kPerLayer = 18;

}  // namespace

DecoderStack::DecoderStack(const std::vector<at::Tensor>& flat, at::Tensor final_norm,
                           int64_t heads, int64_t kv_heads, int64_t head_dim, double eps,
                           double scale)
    : final_norm_(std::move(final_norm)),
      heads_(heads),
      kv_heads_(kv_heads),
      head_dim_(head_dim),
      eps_(eps),
      scale_(scale) {
  TORCH_CHECK(!flat.empty() && flat.size() % kPerLayer == 0, "18 tensors per layer");
  for (size_t at = 0; at < flat.size(); at += kPerLayer)
    layers_.push_back(Layer{flat[at], flat[at + 1], projection(flat, at + 2),
                            projection(flat, at + 6), projection(flat, at + 10),
                            projection(flat, at + 14)});
}

// x: the residual stream [R, hidden] (updated in place); h: layer 0's normed input;
// keys, values: the whole cache [layers, KV, capacity, D]; values_t, vt_done: its transposed
// value blocks [layers, KV, blocks, 64, 32] and how many are up to date (see rope_attend), or
// None. Returns the final-normed rows.
at::Tensor DecoderStack::forward(at::Tensor x, at::Tensor h, at::Tensor cos, at::Tensor sin,
                                 at::Tensor keys, at::Tensor values, int64_t start,
                                 c10::optional<at::Tensor> mask,
                                 c10::optional<at::Tensor> values_t, int64_t vt_done) const {
  TORCH_CHECK(keys.size(0) == static_cast<int64_t>(layers_.size()), "one cache layer per layer");
  const int64_t rows = x.size(0);
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Layer& layer = layers_[i];
    const at::Tensor qkv = apply(layer.qkv, h).view({rows, heads_ + 2 * kv_heads_, head_dim_});
    const c10::optional<at::Tensor> vt =
        values_t.has_value() && values_t->defined()
            ? c10::optional<at::Tensor>(values_t->select(0, i))
            : c10::nullopt;
    const at::Tensor att = rope_attend(qkv, cos, sin, keys.select(0, i), values.select(0, i),
                                       start, heads_, mask, scale_, vt, vt_done);
    h = add_rms_norm_(x, apply(layer.o, att), layer.mlp_norm, eps_);
    const at::Tensor act = silu_mul(apply(layer.gate_up, h));
    const at::Tensor& next = i + 1 < layers_.size() ? layers_[i + 1].attn_norm : final_norm_;
    h = add_rms_norm_(x, apply(layer.down, act), next, eps_);
  }
  return h;
}
