"""Rotary position embedding from tables computed once per model.

Tree rows carry arbitrary positions (``prefix_len + depth``), so cos/sin are gathered by
position from tables covering the whole context instead of being recomputed per forward. The
tables are computed exactly as transformers does (``position * inv_freq`` in fp32, the
frequencies repeated for both halves), so the native logits match to the last bits.

``rotate_half(x) * sin`` is folded into ``swap_halves(x) * signed_sin`` with the sign of the
first half of ``sin`` flipped once in the table, which saves one kernel per layer.
"""

from __future__ import annotations

import torch


class RopeTables:
    """cos and signed-sin tables ``[max_context, head_dim]`` in the model's dtype."""

    def __init__(
        self,
        inv_freq: torch.Tensor,
        max_context: int,
        *,
        scaling: float,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        positions = torch.arange(max_context, dtype=torch.float32)
        freqs = positions[:, None] * inv_freq.float()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        half = inv_freq.numel()
        cos = emb.cos() * scaling
        sin = emb.sin() * scaling
        sin[:, :half] = -sin[:, :half]
        self.half = half
        self.cos = cos.to(device=device, dtype=dtype)
        self.signed_sin = sin.to(device=device, dtype=dtype)

    def gather(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin for ``positions`` (``[rows]``), shaped ``[rows, 1, head_dim]``."""
        return self.cos[positions][:, None], self.signed_sin[positions][:, None]

    def apply(self, x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` (``[rows, heads, head_dim]``) by the gathered angles."""
        swapped = torch.cat((x[..., self.half :], x[..., : self.half]), dim=-1)
        return torch.addcmul(x * cos, swapped, signed_sin)
