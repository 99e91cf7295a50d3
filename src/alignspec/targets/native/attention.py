"""Grouped-query attention of a few new rows against the cached positions.

The query heads that share a KV head are stacked along the row axis (``[kv_heads, groups *
rows, head_dim]``), so each KV head is read once by one batched matmul and the repeated K/V
that ``repeat_kv`` would materialise never exists. Masks are additive ``[rows, end]`` (0 or the
dtype's minimum) and broadcast over heads; ``None`` means every row sees every slot (one-row
decoding needs no mask). Softmax runs in fp32 for bf16/fp16 models. Prompt chunks go through
torch's fused SDPA instead (:func:`attend_causal`); verification and decoding keep
:func:`attend`, so a draft row and the same token decoded alone attend by the same code.

The same code is not the same bits: the BLAS and softmax sum over the key axis in an order
that depends on how many keys there are and where in the cache they sit, so a row verified
in a tree (its ancestors at scattered slots, masked siblings between them) differs from the
same token decoded alone by ~1e-7. fp32 argmax hardly ever sees that, but the int8 model
rounds every activation row, and a 1e-7 shift across a rounding boundary grows into another
token. :func:`attend_exact` (the int8 model's decode and verify where alignspec's CPU kernel,
whose ``attend_rows`` sums in slot order, is not built) runs the scores, the softmax and
the value product in fp64: the order still differs, but only at ~1e-16, which the rounding
back to fp32 removes except in a vanishing fraction of elements.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


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


def tree_mask(
    prefix: int, ancestors: torch.Tensor, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Additive mask of a draft tree's rows: each sees the whole committed prefix and its own
    ``ancestors`` (``[rows, rows]`` bool). Filled in numpy in one pass: a boolean mask turned
    into an additive one through torch took five small tensor ops a verify. The fill value is
    ``dtype``'s minimum, as :func:`build_mask` uses, which fp32 holds exactly."""
    rows = ancestors.shape[0]
    mask = np.zeros((rows, prefix + rows), dtype=np.float32)
    mask[:, prefix:][~ancestors.cpu().numpy()] = float(torch.finfo(dtype).min)
    return torch.from_numpy(mask).to(device=device, dtype=dtype)


def _grouped_scores(
    q: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Scaled ``q k^T`` (+ ``mask``) as ``[kv_heads, groups, rows, end]``: each KV head's query
    group stacked along the row axis, one batched matmul for all of them."""
    rows, heads, dim = q.shape
    kv_heads, end, _ = keys.shape
    groups = heads // kv_heads
    qg = (q * scale).view(rows, kv_heads, groups, dim).permute(1, 2, 0, 3)
    scores = torch.bmm(qg.reshape(kv_heads, groups * rows, dim), keys.transpose(1, 2))
    scores = scores.view(kv_heads, groups, rows, end)
    return scores if mask is None else scores.add_(mask)


def _ungrouped(out: torch.Tensor, rows: int) -> torch.Tensor:
    """``[kv_heads, groups * rows, dim]`` back to ``[rows, heads * dim]``."""
    kv_heads, _, dim = out.shape
    return out.view(kv_heads, -1, rows, dim).permute(2, 0, 1, 3).reshape(rows, -1)


def attend(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """``softmax(q k^T * scale + mask) v`` for ``q`` ``[rows, heads, d]`` against ``keys`` /
    ``values`` ``[kv_heads, end, d]``; returns ``[rows, heads * d]``."""
    rows, (kv_heads, end, _) = q.shape[0], keys.shape
    scores = _grouped_scores(q, keys, mask, scale)
    if scores.dtype != torch.float32:
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype)
    else:
        probs = torch.softmax(scores, dim=-1)
    out = torch.bmm(probs.view(kv_heads, -1, end), values)
    return _ungrouped(out, rows)


def attend_exact(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """:func:`attend` whose result does not depend on the slot layout (see the module).

    ``values`` are fp64 (the cache keeps them so), and so is everything else: products of
    fp32 numbers are exact in fp64, and what a different summation order or a vectorised
    exponential changes sits far below the last bit of the fp32 result. Scores in fp32 were
    not enough: on an AMD EPYC, the matmul of one row and of eight summed a row's dot
    products differently.
    """
    rows, (kv_heads, end, _) = q.shape[0], keys.shape
    scores = _grouped_scores(q.double(), keys.double(), mask, scale).view(kv_heads, -1, end)
    weights = _exp(scores - scores.amax(-1, keepdim=True))
    out = torch.bmm(weights, values).div_(weights.sum(-1, keepdim=True)).to(q.dtype)
    return _ungrouped(out, rows)


def _exp(x: torch.Tensor) -> torch.Tensor:
    """``exp`` with the same bits every run: on 2 threads torch's fp64 ``exp`` of the same
    tensor differed in its last bits between processes (4 of 12 runs on the Xeon); numpy's,
    one thread, never did."""
    if x.device.type != "cpu":
        return torch.exp(x)
    return torch.from_numpy(np.exp(x.numpy()))


def attend_causal(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    start: int,
) -> torch.Tensor:
    """:func:`attend` for a prompt chunk at positions ``start ..`` through torch's fused SDPA.

    The fused kernel never materialises the ``[heads, rows, end]`` scores and, from position 0
    (``is_causal``), skips the blocks above the diagonal. Measured on a loaded Xeon, 1 thread:
    2048 rows from 0 took 100-175 ms against 400 ms for :func:`attend`; 2048 rows after 5952
    cached (explicit mask) 1.3 s against 2.6 s. Each KV head is broadcast to its query group
    by a stride-0 view (timed the same as a copy, without the copy).
    """
    rows, heads, dim = q.shape
    kv_heads, end, _ = keys.shape
    groups = heads // kv_heads
    qg = q.view(rows, kv_heads, groups, dim).permute(1, 2, 0, 3)
    k = keys[:, None].expand(kv_heads, groups, end, dim)
    v = values[:, None].expand(kv_heads, groups, end, dim)
    if start == 0:
        out = F.scaled_dot_product_attention(qg, k, v, is_causal=True, scale=scale)
    else:
        out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=scale)
    return out.permute(2, 0, 1, 3).reshape(rows, heads * dim)
