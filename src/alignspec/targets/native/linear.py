"""Matrix products for the few rows a decoding step or a draft tree has.

A verify forward multiplies 1-64 rows by every weight matrix. The kernels:

- :class:`DenseLinear`: ``F.linear`` on the model's own weights (CUDA, or CPU without oneDNN).
- :class:`PackedLinear` (CPU): the weight reordered once into oneDNN's blocked layout. The
  general GEMM path behind ``F.linear`` repacks the whole weight on every call when there is
  more than one row, which made a 2-16 row forward cost 1.5-2.5x a one-row forward on a
  2-core EPYC; with the packing done at load time 2-4 rows cost about one row.
- int8 (``quantize="int8"``, see :mod:`alignspec.targets.native.quant`): per-row W8A8 through
  alignspec's compiled CPU kernel (:mod:`alignspec.targets.native.cpu_kernel`), else
  oneDNN's prepacked int8 GEMM where a once-per-process probe finds its integer sums exact
  (3-6x faster than the packed fp32 products measured on an AVX-512 VNNI Xeon), else
  weight-only int8. Both are row-independent, which the lossless guarantee relative to the
  quantised model needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignspec.targets.native import cpu_kernel
from alignspec.targets.native.quant import Int8Linear, W8A8Linear, _nbytes, w8a8_exact

#: the row count oneDNN's packed layout is tuned for (hints 4, 16 and 64 measured alike;
#: a hint of 1 made multi-row products 2x slower)
PACK_ROWS_HINT = 16


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


Linear = DenseLinear | PackedLinear | W8A8Linear | Int8Linear


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
        if weight.device.type == "cpu":
            kernel = cpu_kernel.load()
            if kernel is not None or w8a8_exact():
                return W8A8Linear(weight, bias, kernel=kernel)
        return Int8Linear(weight, bias)
    if prepack and can_prepack(weight):
        return PackedLinear(weight, bias)
    return DenseLinear(weight, bias)
