"""The LM head, optionally split along the vocabulary for the few-row case.

With plain ``F.linear`` on CPU, one ``[rows, H] x [H, V]`` product (``V`` = 49k) for 2-8 rows
goes through the general GEMM path that repacks the whole weight per call: 31-44 ms against
10 ms for one row on a 2-core EPYC, ~14 ms when split into vocabulary chunks. With the weight
prepacked for oneDNN (the CPU default, see :mod:`alignspec.targets.native.linear`) the split no
longer matters (measured flat from 2k to 49k per chunk), and on CUDA it would only add
launches, so the head is split only for unpacked CPU weights. Logits are always returned in
fp32, whatever the model's dtype, because verification compares them.
"""

from __future__ import annotations

import torch

from alignspec.targets.native.linear import DenseLinear, Linear, make_linear
from alignspec.targets.native.quant import place_in_huge_pages

#: vocabulary rows per chunk for unpacked CPU weights (2k-8k measured alike; 8k = fewer calls)
HEAD_CHUNK = 8192


class VocabHead:
    """``logits = h W^T (+ b)``, fp32 out, in vocabulary chunks where that pays."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        quantize: str | None = None,
        prepack: bool = True,
        chunk: int | None = None,
    ) -> None:
        """``chunk=None`` picks :data:`HEAD_CHUNK` for unpacked CPU weights, else no split."""
        self.vocab_size = int(weight.shape[0])
        whole = make_linear(weight, bias, quantize=quantize, prepack=prepack)
        if chunk is None:
            unpacked_cpu = isinstance(whole, DenseLinear) and weight.device.type == "cpu"
            chunk = HEAD_CHUNK if unpacked_cpu else self.vocab_size
        if chunk >= self.vocab_size:
            self.parts: list[Linear] = [whole]
            place_in_huge_pages(self.parts)
            return
        del whole
        biases = bias.split(chunk) if bias is not None else [None] * -(-self.vocab_size // chunk)
        self.parts = [
            make_linear(w, b, quantize=quantize, prepack=prepack)
            for w, b in zip(weight.split(chunk), biases, strict=True)
        ]

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if len(self.parts) == 1:
            return self.parts[0](hidden).float()
        return torch.cat([p(hidden) for p in self.parts], dim=-1).float()
