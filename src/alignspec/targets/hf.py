"""The portable target: any Hugging Face causal LM, driven with a 4D tree mask.

transformers passes a ready 4D attention mask straight to the attention kernels, so a tree
forward is one call with explicit ``position_ids`` and an additive mask over ``cache + rows``.
The LM head is applied only to the rows asked for, and to the prompt in chunks, so a long
prefill never materialises ``L x V`` logits.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel

from alignspec.rows import RowLogits
from alignspec.targets.base import PrefillOutput, Target, VerifyOutput, topk_next_tokens
from alignspec.tree import DraftTree

PREFILL_CHUNK = 2048
HEAD_CHUNK = 512


class HFTarget(Target):
    """Wrap a ``transformers`` causal LM as a :class:`Target`."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
        self.head = model.get_output_embeddings()
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.vocab_size = int(self.head.weight.shape[0])
        self.max_context = int(getattr(model.config, "max_position_embeddings", 1 << 30))
        self._softcap = getattr(model.config, "final_logit_softcapping", None)
        self._cache: DynamicCache | None = None
        self._len = 0

    @property
    def cache_len(self) -> int:
        return self._len

    def reset(self) -> None:
        self._cache = DynamicCache(config=self.model.config)
        self._len = 0

    # ------------------------------------------------------------------ helpers
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head (fp32 output) on final hidden states ``[..., H]``."""
        out = self.head(hidden).float()
        if self._softcap:
            out = torch.tanh(out / self._softcap) * self._softcap
        return out

    def _run(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None):
        out = self.base(
            input_ids=ids[None],
            position_ids=positions[None],
            attention_mask=mask,
            past_key_values=self._cache,
            use_cache=True,
        )
        return out.last_hidden_state[0]

    # ------------------------------------------------------------------ Target API
    @torch.inference_mode()
    def prefill(self, ids: list[int], *, topk: int = 0, want_hidden: bool = False) -> PrefillOutput:
        self.reset()
        tokens = torch.tensor(ids, dtype=torch.long, device=self.device)
        hiddens: list[torch.Tensor] = []
        tops: list[tuple[torch.Tensor, torch.Tensor]] = []
        for start in range(0, len(ids), PREFILL_CHUNK):
            chunk = tokens[start : start + PREFILL_CHUNK]
            positions = torch.arange(start, start + len(chunk), device=self.device)
            hidden = self._run(chunk, positions, None)
            self._len += len(chunk)
            if want_hidden:
                hiddens.append(hidden)
            if topk:
                tops.append(topk_next_tokens(hidden, self.logits, topk, HEAD_CHUNK))
            last = hidden[-1]
        return PrefillOutput(
            logits=self.logits(last),
            topk_ids=torch.cat([i for i, _ in tops]) if topk else None,
            topk_probs=torch.cat([p for _, p in tops]) if topk else None,
            hidden=torch.cat(hiddens) if want_hidden else None,
            topk_of=self.topk_of,
        )

    @torch.inference_mode()
    def topk_of(self, hidden: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` next-token ids and probabilities for rows of this model's hidden states."""
        return topk_next_tokens(hidden, self.logits, k, HEAD_CHUNK)

    @torch.inference_mode()
    def verify(self, root: int, tree: DraftTree, *, want_hidden: bool = False) -> VerifyOutput:
        rows = tree.num_rows
        ids = torch.tensor(tree.row_tokens(root), dtype=torch.long, device=self.device)
        positions = tree.position_ids(self._len, device=self.device)
        allowed = torch.ones(rows, self._len + rows, dtype=torch.bool, device=self.device)
        allowed[:, self._len :] = tree.ancestor_mask(self.device)
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        hidden = self._run(ids, positions, mask[None, None])
        logits = RowLogits(hidden, self.logits, tree)
        return VerifyOutput(logits=logits, hidden=hidden if want_hidden else None)

    def commit(self, rows: list[int]) -> None:
        cache = self._cache
        assert cache is not None, "commit() before prefill()"
        keep: slice | torch.Tensor
        if rows == list(range(len(rows))):  # a prefix of the new rows: a slice, no copy
            keep = slice(0, self._len + len(rows))
        else:
            keep = torch.cat(
                [
                    torch.arange(self._len, device=self.device),
                    torch.tensor(rows, dtype=torch.long, device=self.device) + self._len,
                ]
            )
        for layer in cache.layers:  # DynamicLayer stores [batch, heads, seq, head_dim]
            layer.keys = layer.keys[:, :, keep]
            layer.values = layer.values[:, :, keep]
        self._len += len(rows)
