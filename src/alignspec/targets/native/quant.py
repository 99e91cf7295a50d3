"""Int8 linears whose result for a row never depends on the other rows of the forward.

Speculative output must equal the quantised model's own one-token decoding, so a row scored
in a 16-row verify has to come out bitwise equal to the same row scored alone. Per-call
(per-tensor) activation scales, as in torch's dynamic int8 linear, break that: a 10x larger
neighbour changes the scale and with it every other row's rounding. Two kernels keep it:

- :class:`W8A8Linear` (default where it is exact): every activation row is quantised with its
  own absmax scale and multiplied by the int8 weights, either in alignspec's compiled kernel
  (:mod:`.cpu_kernel`, the default where it builds) or in oneDNN's prepacked int8 GEMM
  (``onednn::qlinear_pointwise``) with the activation scale fixed at 1.0, so the kernel's
  output is ``float(int32 sum) * weight_scale[channel]``; the row scale is applied afterwards.
  Integer accumulation is exact, so the blocking oneDNN picks for a given row count cannot
  change a row's value: row-independent by construction. :func:`w8a8_exact` checks the
  exactness once per process with sums at the int32 extremes, because a CPU without VNNI may
  run u8 x s8 products through a saturating 16-bit step (x86 AVX2 ``vpmaddubsw``).
  Measured on a loaded Sapphire Rapids (1 thread, ms, fp32-packed -> this): 576->3072 at 1
  row 0.34 -> 0.09, at 16 rows 0.65 -> 0.12; LM head 576->49152 at 1 row 9.1 -> 1.4, at 16
  rows 15.9 -> 3.0. ``torch._int_mm`` was 2-4x slower (no prepacking: 4.9 / 5.3 ms on the
  head), ``torch._weight_int8pack_mm`` far slower still.
- :class:`Int8Linear`: the same quantised product with the integer sums carried exactly in
  fp32 GEMMs; the fallback where the oneDNN int8 GEMM is not exact or not available (about
  fp32 speed, a quarter of the memory).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from alignspec.targets.native.hugepages import in_huge_pages

#: output channels expanded at once by :class:`Int8Linear`. On SmolLM2-135M 256 was ~15%
#: faster than 1024 with one thread and 1024 ~15-25% faster than 256 with two
INT8_BLOCK = 1024
#: the longest run of int8 x int8 products whose sum fp32 holds exactly (1040 * 127^2 < 2^24)
K_PIECE = 1024


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 weights and one fp32 scale per output channel (absmax / 127)."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Int8 ``x`` with one scale per row (absmax / 127) and those scales ``[rows, 1]``.

    Every step is element-wise or a per-row reduction, so a row's codes depend on that row
    only. (This sequence was the fastest of five measured, ``quantize_per_channel`` included.)
    """
    scale = x.abs().amax(-1, keepdim=True).clamp_(min=1e-12).div_(127.0)
    return torch.round(x / scale).to(torch.int8), scale


def w8a8_ops_available() -> bool:
    return hasattr(torch.ops.onednn, "qlinear_prepack") and hasattr(
        torch.ops.onednn, "qlinear_pointwise"
    )


class _RowInt8:
    """What both W8A8 kernels hold: int8 weights, per-channel scales, an fp32 bias."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.qweight, self.scale = quantize_per_channel(weight)
        self.bias = bias.detach().float() if bias is not None else None
        self.in_features = int(weight.shape[1])
        self.out_features = int(weight.shape[0])

    @property
    def nbytes(self) -> int:
        return self.qweight.numel() + 4 * self.scale.numel() + _nbytes(self.bias)

    def dequantized(self) -> torch.Tensor:
        """The weights this layer effectively multiplies by (activations are rounded too)."""
        return self.qweight.float() * self.scale[:, None]


class W8A8Linear(_RowInt8):
    """``y = (q(x) q(W)^T) * row_scale * channel_scale + b`` with an exact int8 GEMM (CPU).

    ``kernel``: alignspec's own compiled kernel (:mod:`.cpu_kernel`), which quantises the rows
    itself; without it, oneDNN's prepacked int8 GEMM with the row quantisation in torch ops.
    Both give the same bits (measured on every layer shape of SmolLM2-135M, 1-33 rows).
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, kernel: Any = None
    ) -> None:
        # qweight (1 byte/weight) stays for dequantized(); the packed copy is a second one,
        # together still half the fp32 bytes
        super().__init__(weight, bias)
        self.kernel = kernel
        if kernel is not None:
            self.packed, self.colsum = kernel.pack(self.qweight)
        else:
            self.packed = torch.ops.onednn.qlinear_prepack(self.qweight, None)
            self.zero_points = torch.zeros(self.out_features, dtype=torch.long)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        plain = x.dim() == 2 and dtype == torch.float32  # the decoder's: no reshape, no casts
        rows = x if plain else x.reshape(-1, self.in_features).float()
        if self.kernel is not None:
            out = self.kernel.linear(
                rows, self.packed, self.colsum, self.scale, self.bias, self.out_features
            )
            return out if plain else out.view(*x.shape[:-1], self.out_features).to(dtype)
        q, row_scale = quantize_rows(rows)
        out = torch.ops.onednn.qlinear_pointwise(
            q, 1.0, 0, self.packed, self.scale, self.zero_points,
            None, 1.0, 0, torch.float32, "none", [], "",
        )  # fmt: skip
        out.mul_(row_scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.view(*x.shape[:-1], self.out_features).to(dtype)


def place_in_huge_pages(linears: Iterable[object]) -> None:
    """Move the packed weights of the kernel's W8A8 linears among ``linears`` into one region
    of huge pages (:mod:`.hugepages`); other linears stay as they are."""
    own = [lin for lin in linears if isinstance(lin, W8A8Linear) and lin.kernel is not None]
    for lin, packed in zip(own, in_huge_pages([lin.packed for lin in own]), strict=True):
        lin.packed = packed


class Int8Linear(_RowInt8):
    """The same W8A8 product computed with fp32 GEMMs on integer-valued operands (any CPU).

    The int8 weights are expanded block by block into a small reused fp32 buffer (the full
    fp32 copy never exists) and multiplied with the int8 activation codes as fp32. Products
    are at most 127^2 and every partial sum over at most :data:`K_PIECE` of them stays below
    2^24, where fp32 holds integers exactly whatever the summation order, so each piece's sum
    is exact and the pieces are added in a fixed order: row-independent by construction, with
    no trust in the BLAS. The old weight-only variant (exact fp32 activations) was dropped
    because ``F.linear`` on 1 row and on 2 rows sum in different orders: a row's output
    changed by up to 5e-7 with its neighbours, breaking bitwise identity with ``ar``.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        block: int = INT8_BLOCK,
    ) -> None:
        super().__init__(weight, bias)
        q = self.qweight
        self.pieces = [
            [p.contiguous() for p in rows.split(K_PIECE, dim=1)] for rows in q.split(block)
        ]
        self._buffer = torch.empty(min(block, self.out_features) * min(K_PIECE, q.shape[1]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        q, row_scale = quantize_rows(x.reshape(-1, self.in_features).float())
        xs = q.float().split(K_PIECE, dim=1)
        parts = []
        for pieces in self.pieces:
            acc = None
            for xp, wp in zip(xs, pieces, strict=True):
                buf = self._buffer[: wp.numel()].view(wp.shape)
                buf.copy_(wp)
                acc = F.linear(xp, buf) if acc is None else acc.add_(F.linear(xp, buf))
            parts.append(acc)
        out = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
        out.mul_(self.scale).mul_(row_scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.view(*x.shape[:-1], self.out_features).to(dtype)


def _nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@functools.cache
def w8a8_exact() -> bool:
    """Whether oneDNN's int8 GEMM sums exactly here, checked once per process.

    The probe's weight rows are all +127, all -127 and random, its activation rows +-127 with
    the signs of a weight row (the largest possible sums) and random, at 1, 3, 16 and 64 rows;
    every output must equal the exact integer sum (below 2^24, so exact in fp32 too).
    """
    if not (torch.backends.mkldnn.is_available() and w8a8_ops_available()):
        return False
    gen = torch.Generator().manual_seed(0)
    k, n = 1024, 48
    w = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
    w[0], w[1] = 127, -127
    w[2, ::2] = 127
    try:
        packed = torch.ops.onednn.qlinear_prepack(w, None)
        ones, zero_points = torch.ones(n), torch.zeros(n, dtype=torch.long)
        for rows in (1, 3, 16, 64):
            x = torch.randint(-127, 128, (rows, k), generator=gen, dtype=torch.int8)
            x[0] = torch.where(w[2] >= 0, 127, -127)
            if rows > 1:
                x[1] = torch.where(w[3] >= 0, 127, -127)
                x[-1] = 127
            exact = (x.double() @ w.double().t()).float()
            out = torch.ops.onednn.qlinear_pointwise(
                x, 1.0, 0, packed, ones, zero_points,
                None, 1.0, 0, torch.float32, "none", [], "",
            )  # fmt: skip
            if not torch.equal(out, exact):
                return False
    except RuntimeError:  # an op present but unsupported on this CPU build
        return False
    return True
