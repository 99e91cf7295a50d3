"""Saving and loading draft heads as one safetensors file (bf16 weights, config in metadata).

One self-describing file is what ships inside the package and what ``--head PATH`` takes;
loading checks the head against the target so a head trained for another model fails with a
sentence instead of a shape error mid-generation.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from alignspec.errors import AlignspecError
from alignspec.heads.config import HeadConfig
from alignspec.heads.modules import FeatureHead

FORMAT = "alignspec-feature-head"
VERSION = "1"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def shipped_head_path(arch: str) -> Path:
    """Where the package keeps its trained ``arch`` head for the default model."""
    return WEIGHTS_DIR / f"{arch}-smollm2-135m.safetensors"


def save_head(head: FeatureHead, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``head`` (weights in bf16, the draft vocabulary as int64) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, value in head.state_dict().items():
        value = value.detach().cpu()
        tensors[name] = value.to(torch.bfloat16) if value.is_floating_point() else value
        tensors[name] = tensors[name].contiguous()
    meta = {"format": FORMAT, "version": VERSION, "config": json.dumps(head.cfg.to_dict())}
    meta.update(metadata or {})
    save_file(tensors, str(path), metadata=meta)
    return path


def read_config(path: str | Path) -> tuple[HeadConfig, dict[str, str]]:
    """The head config and all metadata stored in a head file."""
    path = Path(path)
    if not path.is_file():
        raise AlignspecError(f"no draft head file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise AlignspecError(f"{path} is not a safetensors file ({exc})") from exc
    if meta.get("format") != FORMAT or "config" not in meta:
        raise AlignspecError(f"{path} is not an alignspec draft head")
    return HeadConfig.from_dict(json.loads(meta["config"])), meta


def load_head(
    path: str | Path,
    *,
    hidden_size: int | None = None,
    vocab_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> FeatureHead:
    """Load a head and check it was built for a target of this hidden size and vocabulary."""
    cfg, _ = read_config(path)
    if hidden_size is not None and cfg.hidden_size != hidden_size:
        raise AlignspecError(
            f"draft head {path} was trained for hidden size {cfg.hidden_size}, but the target's "
            f"is {hidden_size}; train a head for this model with `alignspec train-head`"
        )
    if vocab_size is not None and cfg.vocab_size != vocab_size:
        raise AlignspecError(
            f"draft head {path} was trained for a {cfg.vocab_size}-token vocabulary, but the "
            f"target has {vocab_size}; train a head for this model with `alignspec train-head`"
        )
    state = load_file(str(path))
    head = FeatureHead(cfg)
    if "draft_ids" in state:
        head.set_draft_vocab(state["draft_ids"])
    head.load_state_dict(state)
    return head.to(device=device, dtype=dtype).eval()
