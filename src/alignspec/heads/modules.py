"""EAGLE-2 and FSPAD draft heads: one target-shaped decoder layer that predicts features.

A head reads pairs ``(embed(t_{i+1}), f_i)`` (the target's frozen token embedding of the next
token and the target's last hidden state at position i, after the final norm) and predicts
``f_{i+1}``; the target's frozen LM head turns a prediction into draft-token logits. Both
architectures follow ``methods.md`` §3:

- ``eagle2``: ``fc([e; f])`` then one decoder layer without its input norm; the output is both
  what goes to the LM head and what is fed back as the next feature.
- ``fspad``: adds *feature sampling* (the raw token embedding gates a residual MLP over the
  fused feature) and *partial alignment distillation* (the MLP's down-projection emits 2H and
  the residual is duplicated: the first half ``predict`` feeds the LM head, the second half
  ``regress`` is regressed onto the target feature and fed back).

The attention is written here rather than borrowed from transformers so the head's cache and
tree masks stay under our control and survive transformers' internal churn.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from alignspec.heads.config import HeadConfig


class HeadCache:
    """The head's own KV cache (one layer): ``[B, kv_heads, S, head_dim]``, rolled back by crop."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else int(self.k.shape[2])

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add new entries; return every entry (old then new)."""
        if self.k is None or self.v is None:
            self.k, self.v = k, v
        else:
            self.k = torch.cat([self.k, k], dim=2)
            self.v = torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def crop(self, n: int) -> None:
        """Keep the first ``n`` entries (drop a round's provisional tree nodes)."""
        if self.k is not None and self.v is not None and n < self.length:
            self.k = self.k[:, :, :n]
            self.v = self.v[:, :, :n]


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Llama-style RoPE (halves rotated) on ``[B, heads, T, d]``."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class FeatureHead(nn.Module):
    """An ``eagle2`` or ``fspad`` draft head for one target (see the module docstring)."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h, i = cfg.hidden_size, cfg.intermediate_size
        heads, kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.fc = nn.Linear(2 * h, h, bias=True)
        if cfg.arch == "fspad":
            self.fs_norm = RMSNorm(h, cfg.rms_norm_eps)
            self.fs_gate = nn.Linear(h, cfg.fs_intermediate_size, bias=False)
            self.fs_up = nn.Linear(h, cfg.fs_intermediate_size, bias=False)
            self.fs_down = nn.Linear(cfg.fs_intermediate_size, h, bias=False)
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(h, heads * d, bias=bias)
        self.k_proj = nn.Linear(h, kv * d, bias=bias)
        self.v_proj = nn.Linear(h, kv * d, bias=bias)
        self.o_proj = nn.Linear(heads * d, h, bias=False)
        self.post_attention_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.gate_proj = nn.Linear(h, i, bias=False)
        self.up_proj = nn.Linear(h, i, bias=False)
        out = 2 * h if cfg.arch == "fspad" else h
        self.down_proj = nn.Linear(i, out, bias=False)
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("draft_ids", torch.zeros(0, dtype=torch.long))
        self._head_rows: tuple[int, int, torch.Tensor] | None = None
        #: a prebuilt draft LM head (see :mod:`alignspec.heads.quantized`), used instead of
        #: the weight passed to :meth:`draft_logits`
        self.draft_head: Any = None
        #: an inference-only layer through the CPU kernels (:mod:`alignspec.heads.fast`),
        #: set on int8 copies; it brings its own cache type (:meth:`new_cache`)
        self.fast: Any = None

    # ------------------------------------------------------------------ vocabulary
    def set_draft_vocab(self, ids: torch.Tensor) -> None:
        """Restrict drafting to ``ids`` (EAGLE-3's reduced draft vocabulary; empty = all)."""
        ids = torch.as_tensor(ids, dtype=torch.long).flatten().to(self.draft_ids.device)
        self.draft_ids = ids
        self.cfg.draft_vocab_size = int(ids.numel())
        self._head_rows = None
        self.draft_head = None

    def draft_logits(self, predict: torch.Tensor, lm_head_weight: torch.Tensor) -> torch.Tensor:
        """fp32 logits over the draft vocabulary (or the full one) from the frozen LM head.

        The row subset of the LM head is gathered once per weight tensor and reused: it is
        the largest matrix a drafting step reads.
        """
        if self.draft_head is not None:
            return self.draft_head(predict.float()).float()
        weight = lm_head_weight
        if self.draft_ids.numel():
            key = (lm_head_weight.data_ptr(), int(self.draft_ids.numel()))
            if self._head_rows is None or self._head_rows[:2] != key:
                rows = lm_head_weight.detach()[self.draft_ids.to(lm_head_weight.device)]
                self._head_rows = (*key, rows)
            weight = self._head_rows[2]
        return F.linear(predict.to(weight.dtype), weight).float()

    def to_token_ids(self, idx: torch.Tensor) -> torch.Tensor:
        """Map indices into :meth:`draft_logits`' last axis back to target token ids."""
        if self.draft_ids.numel():
            return self.draft_ids.to(idx.device)[idx]
        return idx

    def new_cache(self) -> Any:
        """An empty KV cache of the kind :meth:`forward` takes."""
        return self.fast.new_cache() if self.fast is not None else HeadCache()

    # ------------------------------------------------------------------ forward
    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.to(self.inv_freq.dtype)[..., None] * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, d]
        return emb.cos()[:, None], emb.sin()[:, None]

    def forward(
        self,
        embeds: torch.Tensor,
        features: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: HeadCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(predict, regress)`` ``[B, T, H]`` for pairs ``(embed(t_{i+1}), f_i)``.

        ``positions`` is ``[B, T]`` (or ``[T]``). Without a cache and mask the pairs attend
        causally among themselves (training). With a cache the new keys/values are appended
        and ``mask`` (bool ``[B, 1, T, cache.length + T]``, True = may attend) says what each
        row sees; ``None`` then means causal over the new rows after the whole cache.
        """
        if self.fast is not None and cache is not None and not isinstance(cache, HeadCache):
            return self.fast(embeds, features, positions, mask, cache)
        cfg = self.cfg
        b, t, h = embeds.shape
        if positions.dim() == 1:
            positions = positions[None].expand(b, t)
        dtype = self.post_attention_layernorm.weight.dtype
        embeds, features = embeds.to(dtype), features.to(dtype)
        x = self.fc(torch.cat([embeds, features], dim=-1))
        if cfg.arch == "fspad":
            x = x + self.fs_down(F.silu(self.fs_gate(embeds)) * self.fs_up(self.fs_norm(x)))
        heads, kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q = self.q_proj(x).view(b, t, heads, d).transpose(1, 2)
        k = self.k_proj(x).view(b, t, kv, d).transpose(1, 2)
        v = self.v_proj(x).view(b, t, kv, d).transpose(1, 2)
        cos, sin = self._rope(positions)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(k, v)
        if mask is None and t > 1:
            rows = torch.arange(t, device=x.device)[:, None] + past
            mask = (torch.arange(past + t, device=x.device)[None, :] <= rows)[None, None]
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=kv != heads)
        x = x + self.o_proj(attn.transpose(1, 2).reshape(b, t, heads * d))
        m = self.post_attention_layernorm(x)
        mlp = self.down_proj(F.silu(self.gate_proj(m)) * self.up_proj(m))
        if cfg.arch == "fspad":
            out = torch.cat([x, x], dim=-1) + mlp
            return out[..., :h], out[..., h:]
        out = x + mlp
        return out, out
