"""What a draft head is: its architecture and the target dimensions it was built for.

The config travels inside the head's safetensors file, so a head can be checked against a
target (hidden size, vocabulary) before it drafts a single token.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from alignspec.errors import AlignspecError

ARCHS = ("eagle2", "fspad")


def _rope_theta(hf_config: Any) -> float:
    """RoPE base of a transformers config (5.x keeps it in ``rope_parameters``)."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(getattr(hf_config, "rope_theta", 10000.0) or 10000.0)


@dataclass
class HeadConfig:
    """Dimensions of a feature draft head (one decoder layer shaped like the target's)."""

    arch: str
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    vocab_size: int
    max_position_embeddings: int
    fs_intermediate_size: int
    draft_vocab_size: int = 0
    target_name: str = ""
    attention_bias: bool = False

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise AlignspecError(
                f"unknown head architecture '{self.arch}'; choose one of {', '.join(ARCHS)}"
            )

    @classmethod
    def for_target(cls, hf_config: Any, arch: str, **overrides: Any) -> HeadConfig:
        """A head config matching a Llama/Qwen2/Mistral-family transformers config."""
        heads = int(hf_config.num_attention_heads)
        hidden = int(hf_config.hidden_size)
        model_type = getattr(hf_config, "model_type", "")
        values: dict[str, Any] = {
            "arch": arch,
            "hidden_size": hidden,
            "intermediate_size": int(hf_config.intermediate_size),
            "num_attention_heads": heads,
            "num_key_value_heads": int(getattr(hf_config, "num_key_value_heads", None) or heads),
            "head_dim": int(getattr(hf_config, "head_dim", None) or hidden // heads),
            "rms_norm_eps": float(getattr(hf_config, "rms_norm_eps", 1e-6)),
            "rope_theta": _rope_theta(hf_config),
            "vocab_size": int(hf_config.vocab_size),
            "max_position_embeddings": int(getattr(hf_config, "max_position_embeddings", 4096)),
            "fs_intermediate_size": int(hf_config.intermediate_size),
            "target_name": str(getattr(hf_config, "name_or_path", "") or model_type),
            "attention_bias": bool(
                getattr(hf_config, "attention_bias", False) or model_type == "qwen2"
            ),
        }
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
