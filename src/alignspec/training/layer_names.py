"""Which head parameter is which tensor of a Llama-style decoder layer.

The head's decoder layer is shaped like one of the target's layers (without the input norm),
so the same table serves the warm start (copy the target's last layer in) and the export for
serving engines (write the layer out under Llama's names).
"""

from __future__ import annotations

#: head parameter -> name inside a ``LlamaDecoderLayer`` (biases only exist for Qwen2-style
#: attention; a name missing on either side is skipped)
HEAD_TO_LLAMA_LAYER = {
    "q_proj.weight": "self_attn.q_proj.weight",
    "q_proj.bias": "self_attn.q_proj.bias",
    "k_proj.weight": "self_attn.k_proj.weight",
    "k_proj.bias": "self_attn.k_proj.bias",
    "v_proj.weight": "self_attn.v_proj.weight",
    "v_proj.bias": "self_attn.v_proj.bias",
    "o_proj.weight": "self_attn.o_proj.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "gate_proj.weight": "mlp.gate_proj.weight",
    "up_proj.weight": "mlp.up_proj.weight",
    "down_proj.weight": "mlp.down_proj.weight",
}
