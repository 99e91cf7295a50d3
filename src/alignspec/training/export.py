"""Exporting an ``eagle2`` head as an EAGLE draft checkpoint for serving engines.

vLLM (``EagleLlamaForCausalLM``) and SGLang (``LlamaForCausalLMEagle``) load an EAGLE-1/2
draft model as a folder with a Llama ``config.json`` (one hidden layer) and weights named
``fc.weight`` / ``fc.bias`` (the ``[embed; feature]`` fusion, embedding first) and
``layers.0.*`` under Llama's own names, without ``layers.0.input_layernorm`` (EAGLE's only
layer has no input norm); both prepend ``model.`` themselves and share the target's embedding
and LM head, so neither is written. Our head is exactly that network: one Llama decoder
layer without its input norm after ``fc``, and no final norm, so the export is a renaming.

The config says ``LlamaForCausalLM`` (as EAGLE's own checkpoints do; both engines turn it into
their EAGLE class when it is passed as the draft model) and ``eagle_fc_bias`` for vLLM
versions that read the fc bias from the config. fspad heads have modules no engine knows
(feature sampling, a 2H down-projection): they are refused here; the README says how they
map.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from alignspec.errors import AlignspecError
from alignspec.heads.config import HeadConfig
from alignspec.heads.io import load_head, read_config
from alignspec.training.layer_names import HEAD_TO_LLAMA_LAYER

FORMATS = ("eagle",)
WEIGHTS_FILE = "model.safetensors"
LAYER_PREFIX = "layers.0."


def eagle_config(cfg: HeadConfig, target: str | None = None) -> dict:
    """The ``config.json`` of the exported draft: a one-layer Llama of the head's shape."""
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": 1,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "attention_bias": cfg.attention_bias,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "eagle_fc_bias": True,
        "base_model": target or cfg.target_name,
    }
    return config


def eagle_state_dict(head_state: dict[str, torch.Tensor], cfg: HeadConfig) -> dict:
    """Head tensors renamed to the EAGLE layout (bf16; biases Llama expects are zero-filled)."""
    out = {"fc.weight": head_state["fc.weight"]}
    if "fc.bias" in head_state:
        out["fc.bias"] = head_state["fc.bias"]
    for mine, llama in HEAD_TO_LLAMA_LAYER.items():
        if mine in head_state:
            out[LAYER_PREFIX + llama] = head_state[mine]
    if cfg.attention_bias:
        # Llama's attention_bias also gives o_proj a bias, which our head does not have
        o = head_state["o_proj.weight"]
        out[LAYER_PREFIX + "self_attn.o_proj.bias"] = torch.zeros(o.shape[0], dtype=o.dtype)
    return {k: v.detach().to(torch.bfloat16).contiguous() for k, v in out.items()}


def export_eagle(head_path: str | Path, output: str | Path, target: str | None = None) -> Path:
    """Write ``head_path`` (an eagle2 head) as an EAGLE draft folder ``output``."""
    cfg, _ = read_config(head_path)
    if cfg.arch != "eagle2":
        raise AlignspecError(
            f"{head_path} is a {cfg.arch} head; only eagle2 heads have an EAGLE layout that "
            "serving engines load (see the README for how fspad's modules map)"
        )
    head = load_head(head_path)
    state = {k: v for k, v in head.state_dict().items() if k != "draft_ids"}
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(eagle_state_dict(state, cfg), str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    config = eagle_config(cfg, target)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder
