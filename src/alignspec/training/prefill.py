"""The target's features for head training: final-norm hidden states and top-K next-token
probabilities at every position of whole conversations.

The native backend's decoder takes any rows, positions and mask, so several conversations can
share one forward (packed: block-diagonal causal mask, positions restarting at 0 for each).
That keeps a GPU busy; on a CPU the forward is already compute-bound and packing only adds
attention over masked pairs, so it is off there by default. Any other target runs one
conversation per ``prefill``, which also covers a conversation longer than the pack.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from alignspec.errors import AlignspecError
from alignspec.targets.base import topk_next_tokens

#: rows per LM-head call when top-K is taken at every position (bounds rows x V logits)
TOPK_ROWS = 256
#: packed tokens per forward on CUDA when the caller does not say (0 = no packing)
CUDA_PACK_TOKENS = 8192

Features = tuple[np.ndarray, np.ndarray, np.ndarray]


def default_pack_tokens(device: str | torch.device) -> int:
    """Packing pays on a GPU only (see the module docstring)."""
    return CUDA_PACK_TOKENS if torch.device(device).type == "cuda" else 0


def _to_numpy(hidden: torch.Tensor, top_ids: torch.Tensor, top_probs: torch.Tensor) -> Features:
    hidden = hidden.float()
    if not torch.isfinite(hidden).all() or hidden.abs().max() > 6.0e4:
        raise AlignspecError("the target's hidden states do not fit in fp16; cannot cache them")
    return (
        hidden.to(torch.float16).cpu().numpy(),
        top_ids.to(torch.int32).cpu().numpy(),
        top_probs.float().to(torch.float16).cpu().numpy(),
    )


def prefill_one(target: Any, ids: list[int], topk: int) -> Features:
    """One conversation through ``target.prefill`` (any backend)."""
    out = target.prefill(ids, topk=topk, want_hidden=True)
    assert out.hidden is not None and out.topk_ids is not None and out.topk_probs is not None
    return _to_numpy(out.hidden, out.topk_ids, out.topk_probs)


def pack(lengths: Sequence[int], budget: int) -> Iterator[list[int]]:
    """Consecutive index groups whose lengths sum to at most ``budget`` (a longer one alone)."""
    group: list[int] = []
    total = 0
    for i, n in enumerate(lengths):
        if group and total + n > budget:
            yield group
            group, total = [], 0
        group.append(i)
        total += n
    if group:
        yield group


@torch.inference_mode()
def prefill_packed(target: Any, seqs: Sequence[list[int]], topk: int) -> list[Features]:
    """Several conversations in one native decoder forward; same features as one by one."""
    from alignspec.targets.native.attention import build_mask

    device = target.device
    lengths = [len(s) for s in seqs]
    rows = sum(lengths)
    tokens = torch.tensor([t for s in seqs for t in s], dtype=torch.long, device=device)
    positions = torch.cat([torch.arange(n, device=device) for n in lengths])
    owner = torch.repeat_interleave(
        torch.arange(len(seqs), device=device), torch.tensor(lengths, device=device)
    )
    index = torch.arange(rows, device=device)
    allowed = (owner[:, None] == owner[None, :]) & (index[None, :] <= index[:, None])
    target.reset()
    target.cache.reserve(rows)
    try:
        mask = build_mask(allowed, target.decoder.dtype, device)
        hidden = target.decoder.forward(tokens, positions, mask, target.cache, 0)
    finally:
        target.reset()
    top_ids, top_probs = topk_next_tokens(hidden, target.head, topk, TOPK_ROWS)
    out = []
    for h, i, p in zip(
        hidden.split(lengths), top_ids.split(lengths), top_probs.split(lengths), strict=True
    ):
        out.append(_to_numpy(h, i, p))
    return out


def target_features(
    target: Any, seqs: Sequence[list[int]], topk: int, pack_tokens: int = 0
) -> list[Features]:
    """Features of every sequence, packed ``pack_tokens`` per forward where the target allows
    (the native backend; a sequence longer than the pack goes alone through ``prefill``)."""
    from alignspec.targets.native import NativeTarget

    if pack_tokens <= 0 or not isinstance(target, NativeTarget):
        return [prefill_one(target, s, topk) for s in seqs]
    budget = min(pack_tokens, int(target.max_context))
    out: list[Features] = []
    for group in pack([len(s) for s in seqs], budget):
        chosen = [seqs[i] for i in group]
        if len(chosen) == 1:
            out.append(prefill_one(target, chosen[0], topk))
        else:
            out.extend(prefill_packed(target, chosen, topk))
    return out
