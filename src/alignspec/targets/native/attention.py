"""Grouped-query attention of a few new rows against the cached positions.

The query heads that share a KV head are stacked along the row axis (``[kv_heads, groups *
rows, head_dim]``), so each KV head is read once by one batched matmul and the repeated K/V
that ``repeat_kv`` would materialise never exists. Masks are additive ``[rows, end]`` (0 or the
dtype's minimum) and broadcast over heads; ``None`` means every row sees every slot (one-row
decoding needs no mask). Softmax runs in fp32 for bf16/fp16 models.
"""

from __future__ import annotations

import torch


def build_mask(
    allowed: torch.Tensor | None, dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    """Additive mask from a boolean ``[rows, end]`` (True = may attend)."""
    if allowed is None:
        return None
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return mask.masked_fill_(~allowed.to(device), torch.finfo(dtype).min)


def causal_allowed(start: int, rows: int, device: torch.device) -> torch.Tensor:
    """Rows at positions ``start ..`` each seeing every slot up to and including their own."""
    cols = torch.arange(start + rows, device=device)
    return cols[None, :] <= (torch.arange(rows, device=device) + start)[:, None]


def tree_allowed(prefix: int, ancestors: torch.Tensor) -> torch.Tensor:
    """Rows of a draft tree: the whole committed prefix plus their own ancestors."""
    rows = ancestors.shape[0]
    allowed = torch.ones(rows, prefix + rows, dtype=torch.bool, device=ancestors.device)
    allowed[:, prefix:] = ancestors
    return allowed


def attend(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """``softmax(q k^T * scale + mask) v`` for ``q`` ``[rows, heads, d]`` against ``keys`` /
    ``values`` ``[kv_heads, end, d]``; returns ``[rows, heads * d]``."""
    rows, heads, dim = q.shape
    kv_heads, end, _ = keys.shape
    groups = heads // kv_heads
    qg = (q * scale).view(rows, kv_heads, groups, dim).permute(1, 2, 0, 3)
    scores = torch.bmm(qg.reshape(kv_heads, groups * rows, dim), keys.transpose(1, 2))
    if mask is not None:
        scores = scores.view(kv_heads, groups, rows, end).add_(mask)
    if scores.dtype != torch.float32:
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype)
    else:
        probs = torch.softmax(scores, dim=-1)
    out = torch.bmm(probs.view(kv_heads, groups * rows, end), values)
    return out.view(kv_heads, groups, rows, dim).permute(2, 0, 1, 3).reshape(rows, heads * dim)
