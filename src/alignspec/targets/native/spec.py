"""Which Hugging Face models the native forward can run, decided by inspecting the config.

The native forward hard-codes one block shape (pre-norm RMSNorm, rotary attention with grouped
KV heads, SiLU-gated MLP). Llama, Mistral and Qwen2 share it exactly; everything that would
change the maths (another activation, logit soft-capping, per-head norms, sliding windows
shorter than the context, RoPE whose frequencies depend on the sequence length) is refused here
with one sentence, so :func:`alignspec.targets.select.make_target` can fall back to the
transformers backend instead of producing subtly wrong logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from alignspec.errors import AlignspecError

#: model_type -> the transformers class that implements it (the weights layout we read)
SUPPORTED = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}
#: RoPE variants whose frequencies are fixed (so one precomputed table serves every position)
STATIC_ROPE = {"default", "linear", "llama3", "yarn"}


class UnsupportedModelError(AlignspecError):
    """The native backend cannot run this model; the transformers backend still can."""


@dataclass(frozen=True)
class ModelSpec:
    """The shapes and constants of a supported decoder, read from its config."""

    model_type: str
    num_layers: int
    hidden: int
    intermediate: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_context: int
    rms_eps: float
    inv_freq: torch.Tensor  # [head_dim / 2] fp32, taken from the model's rotary module
    rope_scaling: float  # multiplies cos and sin (YaRN's attention factor; 1.0 otherwise)

    @property
    def groups(self) -> int:
        """Query heads per KV head."""
        return self.num_heads // self.num_kv_heads


def _rope_type(config: Any) -> str:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    if not params:
        return "default"
    return str(params.get("rope_type", params.get("type", "default")))


def _sliding_window_refusal(config: Any, max_context: int) -> str | None:
    """Why a sliding window makes the model unsupported, or ``None`` when it is harmless."""
    window = getattr(config, "sliding_window", None)
    if not window or window >= max_context:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None  # e.g. Qwen2 with use_sliding_window=False: every layer is full attention
    if layer_types is None and getattr(config, "use_sliding_window", True) is False:
        return None
    return (
        f"its sliding window ({window}) is shorter than its context ({max_context}), "
        "which the native KV cache does not implement"
    )


def inspect_model(model: Any) -> ModelSpec:
    """Read a :class:`ModelSpec` from a loaded transformers model or raise
    :class:`UnsupportedModelError` saying why the native forward cannot run it."""
    config = model.config
    model_type = getattr(config, "model_type", "?")
    cls = type(model).__name__
    if SUPPORTED.get(model_type) != cls:
        names = ", ".join(SUPPORTED.values())
        raise UnsupportedModelError(
            f"the native backend runs {names} only, not {cls} ({model_type}); "
            "use backend 'hf' or 'auto'"
        )
    max_context = int(getattr(config, "max_position_embeddings", 0) or 0)
    rope = _rope_type(config)
    problems = []
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"its activation is {config.hidden_act}, not silu")
    if getattr(config, "final_logit_softcapping", None) or getattr(
        config, "attn_logit_softcapping", None
    ):
        problems.append("it soft-caps logits")
    if rope not in STATIC_ROPE:
        problems.append(f"its RoPE type '{rope}' depends on the sequence length")
    if max_context <= 0:
        problems.append("its config has no max_position_embeddings")
    window = _sliding_window_refusal(config, max_context)
    if window:
        problems.append(window)
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if rotary is None or not hasattr(rotary, "inv_freq"):
        problems.append("its rotary embedding module has no inv_freq")
    if problems:
        raise UnsupportedModelError(
            f"the native backend cannot run this {cls}: {'; '.join(problems)}; "
            "use backend 'hf' or 'auto'"
        )
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return ModelSpec(
        model_type=model_type,
        num_layers=int(config.num_hidden_layers),
        hidden=int(config.hidden_size),
        intermediate=int(config.intermediate_size),
        num_heads=heads,
        num_kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        head_dim=head_dim,
        vocab_size=int(model.get_output_embeddings().weight.shape[0]),
        max_context=max_context,
        rms_eps=float(config.rms_norm_eps),
        inv_freq=rotary.inv_freq.detach().float().cpu(),
        rope_scaling=float(getattr(rotary, "attention_scaling", 1.0)),
    )
