"""Opt-in ``torch.compile`` of the native decoder forward.

Compilation fuses the element-wise work between the matmuls (norms, RoPE, SiLU-gating,
residuals) that otherwise costs one kernel launch each. Shapes change every round (rows per
tree, cache length), so the forward is compiled with dynamic shapes once instead of once per
shape. Compiling takes tens of seconds on a small CPU, which would dominate a short generation,
so it is never on by default (``make_target(..., compile=True)`` / ``--compile`` in the
benchmark). It is meant for CUDA, where launch overhead is what it removes.

On the 2-core CPU it does not pay (measured on 4 of SmolLM2's 30 layers, 1 thread, busy
machine): 115 s to compile the prefill plus ~50 s for each new row count, then 41 ms per
one-row forward against 15 ms eager (14 ms with oneDNN-packed weights), 70 ms against 48 ms
for 16 rows. Compiled code also cannot use the packed weights (dynamo cannot trace oneDNN's
opaque tensors), so ``compile=True`` turns packing off.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from alignspec.targets.native.model import Decoder


def compiled_forward(decoder: Decoder) -> Callable[..., torch.Tensor]:
    """``decoder.forward`` wrapped in ``torch.compile`` (dynamic shapes, no graph breaks)."""
    return torch.compile(decoder.forward, dynamic=True, fullgraph=True)
