"""The EAGLE/FSPAD loss of one batch, summed over the unrolled steps, and its accuracy per step.

Per step (methods.md section 3): pair i must reproduce the target's next feature f_{i+1}
(SmoothL1 on ``regress``) and the target's next-token distribution at i+1 (soft cross-entropy
on ``predict`` through the frozen LM head). A pair counts only where the token it leads to,
t_{i+2}, is an assistant-response token, and at step j only where the drafter has such a
node (i >= j - 1, see :mod:`alignspec.training.unroll`). The LM head, the dominant cost on
CPU, runs only at counted rows and only over the draft vocabulary when one is set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from alignspec.training.batching import feature_noise
from alignspec.training.unroll import unrolled_forward, valid_rows

Steps = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class StepSums:
    """Sums over one step's counted pairs (so they add up across batches and processes)."""

    vloss: float
    ploss: float
    correct: int
    count: int


@dataclass
class LossParts:
    """The loss to back-propagate and the per-step sums (step 1 = teacher forcing)."""

    loss: torch.Tensor
    steps: list[StepSums]

    @property
    def vloss_sum(self) -> float:
        return self.steps[0].vloss

    @property
    def ploss_sum(self) -> float:
        return self.steps[0].ploss

    @property
    def correct(self) -> int:
        return self.steps[0].correct

    @property
    def count(self) -> int:
        return self.steps[0].count


def batch_loss(
    head: Any,
    batch: dict[str, torch.Tensor],
    embed_weight: torch.Tensor,
    lm_head_weight: torch.Tensor,
    vocab_map: torch.Tensor | None,
    *,
    forward: Callable[..., Steps] | None = None,
    unroll: int = 1,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
    v_weight: float = 1.0,
    p_weight: float = 0.1,
    unroll_decay: float = 1.0,
    unroll_vloss: bool = True,
) -> LossParts:
    """The loss of one batch over ``unroll`` steps and each step's draft-token accuracy.

    ``forward`` is the (possibly DDP-wrapped) :class:`~alignspec.training.unroll.UnrolledHead`
    to call (its depth wins over ``unroll``); ``head`` is the bare head whose ``draft_logits``
    maps ``predict`` to logits over the draft vocabulary. ``vocab_map`` maps a full-vocabulary
    id to its draft index (-1 when outside the draft vocabulary); the target's cached top-K
    probabilities are restricted to the draft vocabulary and renormalised as soft labels.
    Only step 1's input features get the EAGLE noise; later steps read the head's own.
    """
    device = embed_weight.device
    ids = batch["input_ids"].to(device)
    hidden = batch["hidden"].to(device).float()
    counted = batch["counted"].to(device)
    feats, target = hidden[:, :-1], hidden[:, 1:]
    if noise_std > 0:
        lens = batch["seq_lens"].to(device)
        feats = feats + feature_noise(feats, lens, noise_std, generator)
    b, t = counted.shape
    with torch.no_grad():
        embeds = F.embedding(ids[:, 1:], embed_weight)
    positions = torch.arange(t, device=device).expand(b, t)
    if forward is None:
        outputs = unrolled_forward(head, embeds, feats, positions, unroll)
    else:
        outputs = forward(embeds, feats, positions)
    if int(counted.sum()) == 0:
        zero = sum((p.sum() + r.sum()) * 0.0 for p, r in outputs)  # every parameter in the graph
        return LossParts(zero, [StepSums(0.0, 0.0, 0, 0) for _ in outputs])
    top_ids = batch["topk_ids"].to(device)[:, 1:]
    probs = batch["topk_probs"].to(device)[:, 1:]
    loss = torch.zeros((), device=device)
    sums = []
    for j, (predict, regress) in enumerate(outputs, start=1):
        rows = counted & valid_rows(j, t, device)[None]
        if not bool(rows.any()):
            sums.append(StepSums(0.0, 0.0, 0, 0))
            loss = loss + (predict.sum() + regress.sum()) * 0.0
            continue
        step_loss, step_sums = _step_loss(
            head, predict[rows], regress[rows], target[rows], top_ids[rows], probs[rows],
            lm_head_weight, vocab_map, v_weight if (j == 1 or unroll_vloss) else 0.0, p_weight,
        )  # fmt: skip
        loss = loss + unroll_decay ** (j - 1) * step_loss
        sums.append(step_sums)
    return LossParts(loss, sums)


def _step_loss(
    head: Any,
    predict: torch.Tensor,
    regress: torch.Tensor,
    target: torch.Tensor,
    top_ids: torch.Tensor,
    probs: torch.Tensor,
    lm_head_weight: torch.Tensor,
    vocab_map: torch.Tensor | None,
    v_weight: float,
    p_weight: float,
) -> tuple[torch.Tensor, StepSums]:
    """Mean loss and sums of one step over its counted rows (all inputs already selected)."""
    vloss = F.smooth_l1_loss(regress.float(), target, reduction="none").mean(-1)
    logits = head.draft_logits(predict, lm_head_weight).float()
    logq = torch.log_softmax(logits, dim=-1)
    idx = top_ids if vocab_map is None else vocab_map[top_ids]
    probs = probs.float() * (idx >= 0)
    mass = probs.sum(-1, keepdim=True)
    valid = mass.squeeze(-1) > 0
    probs = probs / mass.clamp_min(1e-12)
    ploss = -(probs * logq.gather(-1, idx.clamp_min(0))).sum(-1)
    loss = v_weight * vloss.mean()
    if bool(valid.any()):
        loss = loss + p_weight * ploss[valid].mean()
    with torch.no_grad():
        best = logits.argmax(-1)
        draft_ids = getattr(head, "draft_ids", None)
        if draft_ids is not None and draft_ids.numel() > 0:
            best = draft_ids[best]
        correct = int((best == top_ids[:, 0]).sum())
    sums = StepSums(
        float(vloss.detach().sum()), float(ploss[valid].detach().sum()), correct, len(vloss)
    )
    return loss, sums
