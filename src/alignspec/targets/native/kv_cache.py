"""A preallocated KV cache addressed by position, compacted in place after each round.

Two tensors ``[layers, kv_heads, capacity, head_dim]`` hold every layer's keys and values,
so that keeping the accepted path of a draft tree is one gather + copy each for the whole
model instead of one reallocation per layer (what ``DynamicCache`` slicing costs). Values may
be kept in a wider dtype than keys (fp64 for the int8 model's exact attention, see
:mod:`~alignspec.targets.native.attention`). Committed
entries occupy slots ``0 .. length-1`` (slot == position); a verify forward writes its rows
provisionally at ``length ..`` and :meth:`StaticKVCache.commit` moves the accepted ones down.

Capacity grows in blocks (doubling) up to the model's context, so a short chat does not pay
for the full context up front while a long one reallocates only a handful of times.

A bf16 cache attended on AMX tiles also keeps its committed values transposed in blocks of 32
slots (``values_t``, ``[layers, kv_heads, capacity // 32, head_dim, 32]``), the layout a
tile's value products read; the kernel fills blocks ``vt_blocks ..`` as they become committed
(see ``lanes_amx.h``).
"""

from __future__ import annotations

import torch

from alignspec.errors import AlignspecError

BLOCK = 1024


class StaticKVCache:
    """Keys and values of every layer, contiguous per head along the position axis."""

    def __init__(
        self,
        *,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        max_context: int,
        dtype: torch.dtype,
        device: torch.device,
        value_dtype: torch.dtype | None = None,
        transposed_values: bool = False,
    ) -> None:
        self.shape = (num_layers, num_kv_heads, head_dim)
        self.max_context = max_context
        self.dtype = dtype
        self.value_dtype = value_dtype or dtype
        self.device = device
        self.length = 0
        capacity = min(BLOCK, max_context)
        self.keys = self._alloc(capacity, self.dtype)
        self.values = self._alloc(capacity, self.value_dtype)
        self.values_t = self._alloc_t(capacity) if transposed_values else None
        #: blocks of values_t up to date (all committed): the kernel transposes the rest
        self.vt_blocks = 0

    def _alloc(self, capacity: int, dtype: torch.dtype) -> torch.Tensor:
        layers, heads, dim = self.shape
        return torch.zeros(layers, heads, capacity, dim, dtype=dtype, device=self.device)

    def _alloc_t(self, capacity: int) -> torch.Tensor:
        layers, heads, dim = self.shape
        return torch.zeros(
            layers, heads, capacity // 32, dim, 32, dtype=self.value_dtype, device=self.device
        )

    @property
    def capacity(self) -> int:
        return int(self.keys.shape[2])

    def reset(self) -> None:
        """Forget every entry (the buffer is kept for the next request)."""
        self.length = 0
        self.vt_blocks = 0

    def reserve(self, end: int) -> None:
        """Make room for slots ``< end`` before a forward writes rows there."""
        if end > self.max_context:
            raise AlignspecError(
                f"the sequence would reach {end} tokens, beyond the model's context of "
                f"{self.max_context}; shorten the prompt or max_new_tokens"
            )
        if end <= self.capacity:
            return
        capacity = self.capacity
        while capacity < end:
            capacity *= 2
        capacity = min(-(-capacity // BLOCK) * BLOCK, self.max_context)
        keys, values = self._alloc(capacity, self.dtype), self._alloc(capacity, self.value_dtype)
        keys[:, :, : self.length] = self.keys[:, :, : self.length]
        values[:, :, : self.length] = self.values[:, :, : self.length]
        self.keys, self.values = keys, values
        if self.values_t is not None:
            values_t = self._alloc_t(capacity)
            values_t[:, :, : self.vt_blocks] = self.values_t[:, :, : self.vt_blocks]
            self.values_t = values_t

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store ``k``/``v`` (``[rows, kv_heads, head_dim]``) at slots ``start ..``."""
        end = start + k.shape[0]
        self.keys[layer, :, start:end] = k.transpose(0, 1)
        self.values[layer, :, start:end] = v.transpose(0, 1)

    def layer(self, layer: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of keys and values ``[kv_heads, end, head_dim]`` (no copy)."""
        return self.keys[layer, :, :end], self.values[layer, :, :end]

    def commit(self, rows: list[int]) -> None:
        """Keep the provisional rows ``rows`` (increasing), moved to follow the prefix."""
        n = len(rows)
        if rows != list(range(n)):  # a prefix is already in place
            index = torch.tensor(rows, dtype=torch.long, device=self.device) + self.length
            for data in (self.keys, self.values):
                data[:, :, self.length : self.length + n] = data.index_select(2, index)
        self.length += n
