"""Training-time test (EAGLE-3, HASS): the head unrolled K steps, fed its own features.

When drafting, only the first head step after the committed text reads target features; the
step after it reads the head's own prediction (``regress``: the fed-back half in fspad, the
whole output in eagle2). Teacher forcing never shows the head that input, so its accuracy
collapses with depth. Here step ``j`` of the unroll gives every position exactly what the
drafter's ``j``-th step gives it on a chain (no branching), so the loss sees the same inputs:

- step 1 is teacher forcing: pair ``i`` = ``(embed(t_{i+1}), f_i)`` at position ``i``, causal.
- step ``j >= 2``: pair ``i`` = ``(embed(t_{i+1}), r_{j-1, i-1})`` at position ``i``, where
  ``r_{j-1, i-1}`` is step ``j - 1``'s feature output one position earlier. In the drafter
  this row is a draft node ``j - 1`` levels below a root whose committed prefix ends at
  ``c = i - j + 2`` pairs; it sees the committed pairs (step-1 keys ``< c``), its ancestors
  (step ``m``'s key at ``i - (j - m)``, ``2 <= m < j``) and itself. That is
  :func:`step_mask`, the drafter's ``_tree_mask`` for a chain.

Rows ``i < j - 1`` have no committed prefix at step ``j`` (there is no draft node there);
they are computed (on a zero feature) but never counted and never seen by a counted row.
The head's keys and values of every step go into one :class:`HeadCache`, exactly as the
drafter appends a level's nodes to the head's cache.
"""

from __future__ import annotations

import torch
from torch import nn

from alignspec.heads.modules import FeatureHead, HeadCache


def step_mask(step: int, length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool ``[1, 1, T, step * T]`` (True = may attend) for unrolled step ``step`` (1-based).

    Key block ``m`` (0-based, ``m = 0`` the teacher-forced step) holds step ``m + 1``'s keys
    for positions ``0 .. T - 1``. Row ``i`` sees block 0 up to ``i - step + 1`` and, in every
    later block ``m``, only position ``i - (step - 1 - m)`` (its ancestor; itself in the last).
    """
    rows = torch.arange(length, device=device)[:, None]
    cols = torch.arange(length, device=device)[None, :]
    blocks = [cols <= rows - step + 1]
    for m in range(1, step):
        blocks.append(cols == rows - (step - 1 - m))
    return torch.cat(blocks, dim=1)[None, None]


def valid_rows(step: int, length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool ``[T]``: rows that are real draft nodes at ``step`` (a committed prefix exists)."""
    return torch.arange(length, device=device) >= step - 1


def shift_features(regress: torch.Tensor) -> torch.Tensor:
    """Step ``j``'s input features: step ``j - 1``'s outputs moved one position later."""
    return torch.cat([torch.zeros_like(regress[:, :1]), regress[:, :-1]], dim=1)


def unrolled_forward(
    head: FeatureHead | nn.Module,
    embeds: torch.Tensor,
    features: torch.Tensor,
    positions: torch.Tensor,
    steps: int,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(predict, regress)`` of every step ``1 .. steps`` for ``[B, T]`` pairs.

    ``embeds`` (``embed(t_{i+1})``) and ``positions`` are the same at every step; only the
    features change. Gradients flow through the fed-back features, so a step's loss also
    trains the steps before it (as in EAGLE-3).
    """
    cache = HeadCache()
    t = embeds.shape[1]
    outputs = [head(embeds, features, positions, cache=cache)]
    for step in range(2, steps + 1):
        mask = step_mask(step, t, embeds.device)
        feats = shift_features(outputs[-1][1])
        outputs.append(head(embeds, feats, positions, mask=mask, cache=cache))
    return outputs


class UnrolledHead(nn.Module):
    """A head plus its unroll depth, as one module: Accelerate wraps it (DDP needs one forward
    per backward), and its only parameters are the head's."""

    def __init__(self, head: FeatureHead, steps: int) -> None:
        super().__init__()
        self.head = head
        self.steps = steps

    def forward(
        self, embeds: torch.Tensor, features: torch.Tensor, positions: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return unrolled_forward(self.head, embeds, features, positions, self.steps)
