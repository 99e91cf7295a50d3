"""A feature head for an int8 target: its linears and draft LM head through the int8 kernels.

A head drafts for every round, so on a fast int8 target its fp32 weights (about 55 MB for
SmolLM2's heads, read up to five times a round) cost as much as a target step. Drafts never
change a lossless method's output, only how much of it is accepted, so the head may use the
same per-row W8A8 products as the target (:mod:`alignspec.targets.native.quant`) at a quarter
of the bytes. Where alignspec's CPU kernel builds, the copy's layer also runs through it
(:mod:`alignspec.heads.fast`). The shared fp32 head stays untouched: this builds a separate copy.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from alignspec.heads.modules import FeatureHead
from alignspec.targets.native import cpu_kernel
from alignspec.targets.native.linear import make_linear
from alignspec.targets.native.quant import place_in_huge_pages


class FrozenLinear(nn.Module):
    """An inference-only ``nn.Linear`` stand-in around one of the native backend's kernels."""

    def __init__(self, kernel: Any) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel(x)


def quantize_head(head: FeatureHead, lm_head_weight: torch.Tensor) -> FeatureHead:
    """An int8 copy of ``head`` whose draft LM head is ``lm_head_weight``'s draft-vocab rows."""
    quantized = copy.deepcopy(head)
    for name, module in list(quantized.named_children()):
        if isinstance(module, nn.Linear):
            kernel = make_linear(module.weight.detach().float(), module.bias, quantize="int8")
            setattr(quantized, name, FrozenLinear(kernel))
    rows = lm_head_weight.detach().float()
    if quantized.draft_ids.numel():
        rows = rows[quantized.draft_ids.to(rows.device)]
    quantized.draft_head = make_linear(rows, quantize="int8")
    kernel = cpu_kernel.load() if rows.device.type == "cpu" else None
    if kernel is not None:
        from alignspec.heads.fast import KernelHeadLayer

        quantized.fast = KernelHeadLayer(head, kernel)
        place_in_huge_pages([quantized.draft_head, *vars(quantized.fast).values()])
    return quantized
