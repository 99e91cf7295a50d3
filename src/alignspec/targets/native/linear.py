"""Matrix products for the few rows a decoding step or a draft tree has.

A verify forward multiplies 1-64 rows by every weight matrix. Three kernels:

- :class:`DenseLinear`: ``F.linear`` on the model's own weights (CUDA, or CPU without oneDNN).
- :class:`PackedLinear` (CPU): the weight reordered once into oneDNN's blocked layout. The
  general GEMM path behind ``F.linear`` repacks the whole weight on every call when there is
  more than one row, which made a 2-16 row forward cost 1.5-2.5x a one-row forward on a
  2-core EPYC; with the packing done at load time 2-4 rows cost about one row.
- :class:`Int8Linear`: weight-only int8 with one scale per output channel (a quarter of the
  fp32 bytes), dequantised a block of output channels at a time into a small reused buffer, so
  the full-precision copy never exists. Activations stay exact, so a row's result does not
  depend on which other rows share the forward (per-tensor activation quantisation would break
  that, and with it the lossless guarantee relative to the quantised model). torch's fused
  ``_weight_int8pack_mm`` was measured 2.5x (1 row) to 20x (16 rows) slower than this on the
  AVX2 CPU, so it is not used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: output channels dequantised at once. On SmolLM2-135M 256 was ~15% faster than 1024 with
#: one thread and 1024 ~15-25% faster than 256 with two (fewer parallel regions); two is the
#: default thread count on the 2-core target machine
INT8_BLOCK = 1024
#: the row count oneDNN's packed layout is tuned for (hints 4, 16 and 64 measured alike;
#: a hint of 1 made multi-row products 2x slower)
PACK_ROWS_HINT = 16


def _nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class DenseLinear:
    """``y = x W^T + b`` with the weights as loaded."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.weight = weight
        self.bias = bias
        self.out_features = int(weight.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of weights read by one call (for bandwidth figures)."""
        return _nbytes(self.weight, self.bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def can_prepack(weight: torch.Tensor) -> bool:
    """Whether oneDNN can hold ``weight`` prepacked (CPU, fp32, ops present)."""
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32  # bf16 GEMMs are slow on CPUs without AVX512-BF16
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


class PackedLinear:
    """``y = x W^T + b`` with ``W`` reordered once for oneDNN (CPU)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS_HINT)
        self.bias = bias
        self.out_features = int(weight.shape[0])
        self._nbytes = _nbytes(weight, bias)

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 weights and one scale per output channel (absmax / 127)."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear:
    """Weight-only int8 linear: per-channel scales, dequantised block by block."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        block: int = INT8_BLOCK,
    ) -> None:
        self.dtype = weight.dtype
        q, scale = quantize_per_channel(weight)
        self.qweight = q
        self.scale = scale.to(weight.dtype)
        self.bias = bias
        self.out_features = int(weight.shape[0])
        self.blocks = q.split(block)
        self._buffer = torch.empty(
            min(block, self.out_features), weight.shape[1], dtype=weight.dtype, device=q.device
        )

    @property
    def nbytes(self) -> int:
        return _nbytes(self.qweight, self.scale, self.bias)

    def dequantized(self) -> torch.Tensor:
        """The weights this layer effectively multiplies by (for tests and references)."""
        return self.qweight.to(self.dtype) * self.scale[:, None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        for q in self.blocks:
            buf = self._buffer[: q.shape[0]]
            buf.copy_(q)
            parts.append(F.linear(x, buf))
        out = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
        out.mul_(self.scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out


Linear = DenseLinear | PackedLinear | Int8Linear


def make_linear(
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    quantize: str | None = None,
    prepack: bool = True,
) -> Linear:
    """The kernel for one weight matrix: int8 when asked, else oneDNN-prepacked where
    possible (and ``prepack``), else plain ``F.linear``."""
    if quantize == "int8":
        return Int8Linear(weight, bias)
    if prepack and can_prepack(weight):
        return PackedLinear(weight, bias)
    return DenseLinear(weight, bias)
