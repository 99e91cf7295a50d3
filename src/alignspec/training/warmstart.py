"""The head a run starts from: fresh, warm-started from the target, or an existing head file.

A fresh head's decoder layer is random; ``init_from_target`` copies the target's own last
decoder layer in instead (issue #12's "free prior"). The target's layer has an input norm the
head lacks (EAGLE drops it on its only layer), so that one tensor is not copied. In fspad the
down-projection emits ``[predict; regress]``; both halves start as the target's.

It is opt-in because, measured on SmolLM2-135M (2 held-out ShareGPT sequences, before any
training, unroll 3), it is a worse start than random: the target's attention and MLP write
residual-stream-sized outputs (RMS ~36 at the last layer) into a head that works on
final-normed features (RMS ~1.6). Per-step feature loss: random 0.94 / 0.80 / 0.77, copied
17.0 / 185 / 2025 (the fed-back features grow ~10x per step); even with both output
projections scaled by 1 / RMS it stays above random (1.02 / 0.86 / 0.82). Whether it pays
after long training was not measured.

``init_from`` instead continues from a trained head file (its draft vocabulary comes with it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from alignspec.errors import AlignspecError
from alignspec.heads.config import HeadConfig
from alignspec.heads.io import load_head
from alignspec.heads.modules import FeatureHead
from alignspec.training.config import TrainConfig
from alignspec.training.layer_names import HEAD_TO_LLAMA_LAYER


@dataclass
class FrozenTarget:
    """What the head borrows from the target: its config, embedding and LM head (frozen), and
    its last decoder layer's weights (for the warm start)."""

    hf_config: Any
    embed_weight: torch.Tensor
    lm_head_weight: torch.Tensor
    name: str = ""
    last_layer: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: Any, name: str = "") -> FrozenTarget:
        embed = model.get_input_embeddings().weight.detach()
        head = model.get_output_embeddings()
        lm = head.weight.detach() if head is not None else embed
        layers = getattr(getattr(model, "model", None), "layers", None)
        last = {}
        if layers is not None and len(layers):
            last = {k: v.detach().clone() for k, v in layers[-1].state_dict().items()}
        name = name or getattr(model.config, "_name_or_path", "")
        return cls(model.config, embed, lm, name, last)


def copy_target_layer(head: FeatureHead, layer: dict[str, torch.Tensor]) -> list[str]:
    """Copy the target's decoder layer into ``head`` in place; returns the head names copied."""
    own = head.state_dict()
    copied = []
    with torch.no_grad():
        for mine, theirs in HEAD_TO_LLAMA_LAYER.items():
            if mine not in own or theirs not in layer:
                continue
            src, dst = layer[theirs], own[mine]
            if mine == "down_proj.weight" and dst.shape[0] == 2 * src.shape[0]:
                src = torch.cat([src, src])  # fspad: predict and regress halves alike
            if src.shape != dst.shape:
                raise AlignspecError(
                    f"cannot warm-start {mine}: the target's {theirs} is {tuple(src.shape)}, "
                    f"the head's {tuple(dst.shape)}"
                )
            dst.copy_(src.to(dst.dtype))
            copied.append(mine)
    return copied


def build_head(
    target: FrozenTarget, cfg: TrainConfig, draft_ids: torch.Tensor | None
) -> FeatureHead:
    """The head a run starts from (fp32): ``cfg.init_from``'s, else a fresh one, warm-started
    from the target's last layer when ``cfg.init_from_target``."""
    if cfg.init_from:
        head = load_head(
            cfg.init_from,
            hidden_size=int(target.embed_weight.shape[1]),
            vocab_size=int(target.lm_head_weight.shape[0]),
        )
        if head.cfg.arch != cfg.arch:
            raise AlignspecError(
                f"--init-from {cfg.init_from} is a {head.cfg.arch} head, not {cfg.arch}"
            )
        return head.train()
    n = 0 if draft_ids is None else len(draft_ids)
    head_cfg = HeadConfig.for_target(
        target.hf_config, cfg.arch, draft_vocab_size=n, target_name=target.name
    )
    head = FeatureHead(head_cfg)
    if draft_ids is not None:
        head.set_draft_vocab(draft_ids)
    if cfg.init_from_target and target.last_layer:
        copy_target_layer(head, target.last_layer)
    return head
