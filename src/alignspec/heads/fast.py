"""The int8 head's layer through alignspec's CPU kernels: a drafting step in a few calls.

A drafting step runs the head's one layer over 1-4 rows. Through torch that is some 60
small ops (RoPE by concatenation, a six-op RMSNorm, a KV cache grown by ``torch.cat``) and
ten int8 calls: on the Xeon of BENCHMARKS.md a 4-row step took 0.66 ms, a tenth of a whole
target step, and a round draws two to four of them. This path runs the layer the way the
native decoder runs one of its own (:mod:`alignspec.targets.native.model`): q/k/v and
gate/up each fused into one int8 product, RoPE, the cache write and attention in one
``rope_attend`` call over a preallocated cache, the kernel's RMSNorm and SiLU-multiply.

It changes which drafts are proposed by rounding only (never a lossless method's output), and
it is inference-only: training keeps :class:`~alignspec.heads.modules.HeadCache` and torch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from alignspec.targets.native.linear import make_linear
from alignspec.targets.native.model import fused_bias


class KernelHeadCache:
    """The head's keys and values, ``[kv_heads, capacity, head_dim]`` each, grown by doubling."""

    def __init__(self, kv_heads: int, head_dim: int, capacity: int = 512) -> None:
        self.k = torch.zeros(kv_heads, capacity, head_dim)
        self.v = torch.zeros(kv_heads, capacity, head_dim)
        self.length = 0

    def reserve(self, end: int) -> None:
        """Make room for slots ``< end``, keeping the filled ones."""
        cap = self.k.shape[1]
        if end <= cap:
            return
        while cap < end:
            cap *= 2
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_zeros(old.shape[0], cap, old.shape[2])
            new[:, : self.length] = old[:, : self.length]
            setattr(self, name, new)

    def crop(self, n: int) -> None:
        """Keep the first ``n`` entries (drop a round's provisional tree nodes)."""
        self.length = min(self.length, n)


class KernelHeadLayer:
    """The layer of an (int8) :class:`~alignspec.heads.modules.FeatureHead`, same signature."""

    def __init__(self, head: Any, kernel: Any) -> None:
        cfg = head.cfg
        self.kernel = kernel
        self.arch = cfg.arch
        self.hidden = cfg.hidden_size
        self.heads, self.kv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.eps = float(cfg.rms_norm_eps)
        self.scale = 1.0 / math.sqrt(self.d)
        self.inv_freq = head.inv_freq.detach().float()
        self._cos = self._sin = torch.empty(0, 2 * self.inv_freq.numel())

        def lin(*mods: Any) -> Any:
            weight = torch.cat([m.weight.detach().float() for m in mods])
            bias = fused_bias(*mods)
            return make_linear(weight, None if bias is None else bias.float(), quantize="int8")

        self.fc = lin(head.fc)
        self.qkv = lin(head.q_proj, head.k_proj, head.v_proj)
        self.o = lin(head.o_proj)
        self.gate_up = lin(head.gate_proj, head.up_proj)
        self.down = lin(head.down_proj)
        self.mlp_norm = head.post_attention_layernorm.weight.detach().float()
        if self.arch == "fspad":
            self.fs_gate = lin(head.fs_gate)
            self.fs_up = lin(head.fs_up)
            self.fs_down = lin(head.fs_down)
            self.fs_norm = head.fs_norm.weight.detach().float()

    def new_cache(self) -> KernelHeadCache:
        return KernelHeadCache(self.kv, self.d)

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``[T, head_dim]`` of ``positions``, from tables grown by doubling.

        Each table row is ``cat(p * inv_freq, p * inv_freq)``'s cos or sin, the same
        elementwise arithmetic as forming them per call (the same bits), which took six small
        torch ops a step."""
        need = int(positions.max()) + 1
        if need > self._cos.shape[0]:
            size = max(need, 2 * self._cos.shape[0], 256)
            freqs = torch.arange(size, dtype=torch.float32)[:, None] * self.inv_freq
            emb = torch.cat((freqs, freqs), dim=-1)
            self._cos, self._sin = emb.cos(), emb.sin()
        return self._cos.index_select(0, positions), self._sin.index_select(0, positions)

    def __call__(
        self,
        embeds: torch.Tensor,
        features: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KernelHeadCache,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(predict, regress)`` ``[1, T, H]``; ``mask`` is the drafter's bool
        ``[1, 1, T, cache.length + T]`` (True = may attend), ``None`` = causal after the cache."""
        k = self.kernel
        t = embeds.shape[1]
        e = embeds[0].float().contiguous()
        x = self.fc(torch.cat([e, features[0].float()], dim=-1))
        if self.arch == "fspad":
            up = self.fs_up(k.rms_norm(x, self.fs_norm, self.eps))
            x = x + self.fs_down(F.silu(self.fs_gate(e)) * up)
        start = cache.length
        cache.reserve(start + t)
        cos, sin = self._rope(positions.reshape(-1)[-t:].long())
        if mask is not None:
            additive = (~mask.reshape(t, start + t)).float()  # non-zero = hidden
        elif t > 1:
            slots = torch.arange(start + t)
            additive = (slots[None, :] > (torch.arange(t) + start)[:, None]).float()
        else:
            additive = None
        qkv = self.qkv(x).view(t, self.heads + 2 * self.kv, self.d)
        att = k.rope_attend(
            qkv, cos, sin, cache.k, cache.v, start, self.heads, additive, self.scale
        )
        cache.length = start + t
        m = k.add_rms_norm_(x, self.o(att), self.mlp_norm, self.eps)
        mlp = self.down(k.silu_mul(self.gate_up(m)))
        if self.arch == "fspad":
            out = torch.cat([x, x], dim=-1) + mlp
            return out[None, :, : self.hidden], out[None, :, self.hidden :]
        out = (x + mlp)[None]
        return out, out
