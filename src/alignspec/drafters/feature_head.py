"""EAGLE-2 dynamic-tree drafting with a trained feature head (``eagle2`` or ``fspad``).

The head extends the target's own features: after every verify the engine hands over the last
hidden states of the accepted rows, the drafter appends the pairs ``(embed(next token),
feature)`` to the head's KV cache, and drafting starts from the head's prediction of the root's
feature. A round then grows a tree best-first (methods.md §3): the head's ``top_k`` tokens,
``depth`` expansion steps on the ``top_k`` frontier nodes with the highest cumulative
log-probability (all frontier nodes in one head forward under a tree mask over the head's
cache), and finally the ``total_tokens - 1`` best nodes overall. The head's cache is rolled
back to the committed pairs after every round, so only verified text ever conditions it.

Drafts are point masses, so at temperature > 0 the lossless verifier accepts them by
speculative sampling: what the head proposes changes speed, never the output distribution.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from alignspec.drafters.base import Drafter
from alignspec.errors import AlignspecError
from alignspec.heads.modules import FeatureHead
from alignspec.options import check_fields
from alignspec.rows import row_index
from alignspec.targets.base import PrefillOutput, VerifyOutput
from alignspec.tree import DraftTree
from alignspec.verifiers.base import VerifyResult


@dataclass
class FeatureHeadConfig:
    """Options of the feature-head methods (defaults sized for a 2-core CPU, see README)."""

    head: str = field(
        default="", metadata={"help": "draft head file (empty: the head shipped for the method)"}
    )
    tree_top_k: int = field(
        default=4,
        metadata={"help": "EAGLE-2 top_k: children per node and frontier width", "min": 1},
    )
    depth: int = field(
        default=4, metadata={"help": "expansion steps after the first level", "min": 0}
    )
    total_tokens: int = field(
        default=12, metadata={"help": "tree size verified per round, root included", "min": 2}
    )
    head_context: int = field(
        default=256,
        metadata={
            "help": "prompt pairs the head reads before its first draft (the latest ones): "
            "a head pass over a whole long prompt costs more than its drafts gain",
            "min": 1,
        },
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "head weights: auto (int8 when the target is int8), fp32 or int8",
            "choices": ("auto", "fp32", "int8"),
        },
    )

    def __post_init__(self) -> None:
        check_fields(self, "feature-head")
        if self.tree_top_k < 1 or self.depth < 0 or self.total_tokens < 2:
            raise AlignspecError("need tree_top_k >= 1, depth >= 0 and total_tokens >= 2")


@dataclass
class _Node:
    token: int
    parent: int  # index into the node list, -1 for a child of the root
    score: float
    depth: int


class FeatureHeadDrafter(Drafter):
    """Drafts trees with a :class:`FeatureHead` over the target's features."""

    needs_hidden = True
    costly = True

    def __init__(
        self,
        head: FeatureHead,
        embed_weight: torch.Tensor,
        lm_head_weight: torch.Tensor,
        config: FeatureHeadConfig | None = None,
    ) -> None:
        self.head = head
        self.config = config or FeatureHeadConfig()
        dtype = next(head.parameters()).dtype
        self.embed_weight = embed_weight.detach()
        self.lm_head_weight = lm_head_weight.detach().to(dtype)
        self.cache = self.head.new_cache()
        self._tokens: list[int] = []
        self._feats: list[torch.Tensor] = []
        self._root_feature: torch.Tensor | None = None
        self._root_logp: torch.Tensor | None = None
        self._offset = 0  # prompt position of the head cache's first entry
        self._step_seconds = 0.0  # the last expansion step's time (for the budget)

    # ------------------------------------------------------------------ bookkeeping
    def _embed(self, ids: list[int] | torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(ids, dtype=torch.long, device=self.embed_weight.device)
        return self.embed_weight[idx]

    def begin(self, prompt: list[int], prefill: PrefillOutput) -> None:
        if prefill.hidden is None:
            raise AlignspecError("the feature-head drafter needs the target's hidden states")
        self.cache = self.head.new_cache()
        # pairs (t_{i+1}, f_i) before the last head_context are never read: the head's
        # cache then starts at prompt position _offset
        self._offset = max(0, len(prompt) - 1 - self.config.head_context)
        # f_offset .. f_{L-1}; f_{L-1} waits for the first token
        self._feats = [prefill.hidden[self._offset :]]
        self._tokens = list(prompt[1 + self._offset :])

    def update(self, result: VerifyResult, out: VerifyOutput) -> None:
        if out.hidden is None:
            raise AlignspecError("the feature-head drafter needs the target's hidden states")
        self._feats.append(out.hidden[row_index(result.rows)])
        self._tokens.extend(result.tokens[: len(result.rows)])

    def _absorb(self, root: int) -> None:
        """Run the head over the pairs committed since the last round (extends its cache).

        After more of them than a prefill leaves (rounds the budget skipped the drafter), the
        head restarts from the newest ``head_context`` pairs and the root's, as :meth:`begin`
        does: a probe after a long skip then costs at most one such pass (256 pairs took 5.6
        ms for eagle2 and 8.6 for fspad on the int8 model, 512 would take twice that)."""
        feats = torch.cat(self._feats) if len(self._feats) > 1 else self._feats[0]
        tokens = self._tokens
        if len(tokens) < feats.shape[0]:
            tokens.append(root)  # the root token pairs with the newest feature
        n, keep = feats.shape[0], self.config.head_context + 1
        if n > keep:
            self._offset += self.cache.length + n - keep
            self.cache = self.head.new_cache()
            feats, tokens, n = feats[n - keep :], tokens[n - keep :], keep
        start = self.cache.length
        positions = torch.arange(start, start + n, device=feats.device) + self._offset
        predict, regress = self.head(
            self._embed(tokens)[None], feats[None], positions, cache=self.cache
        )
        self._root_feature = regress[0, -1]
        self._root_logp = torch.log_softmax(
            self.head.draft_logits(predict[0, -1:], self.lm_head_weight), dim=-1
        )[0]
        self._feats, self._tokens = [], []

    # ------------------------------------------------------------------ drafting
    @torch.inference_mode()
    def propose(self, tokens: list[int]) -> DraftTree:
        cfg = self.config
        self._absorb(tokens[-1])
        assert self._root_feature is not None and self._root_logp is not None
        committed = self.cache.length  # entries 0 .. committed-1: positions < root
        k = min(cfg.tree_top_k, self._root_logp.numel())
        top = self._root_logp.topk(k)
        nodes: list[_Node] = []
        ids = self.head.to_token_ids(top.indices).tolist()
        frontier = []
        for tok, lp in zip(ids, top.values.tolist(), strict=True):
            nodes.append(_Node(tok, -1, lp, 1))
            frontier.append(len(nodes) - 1)
        # per frontier node: the feature its children are conditioned on
        parent_feat = self._root_feature[None].expand(len(frontier), -1)
        # head cache entry index of each expanded node, to build ancestor masks
        entry_of: dict[int, int] = {}
        for step in range(cfg.depth):
            if not self._worth_expanding(nodes, frontier, step, len(tokens)):
                break
            started = time.perf_counter()
            rows = len(frontier)
            embeds = self._embed([nodes[i].token for i in frontier])[None]
            positions = torch.full((rows,), self._offset + committed + step, device=embeds.device)
            mask = self._tree_mask(frontier, nodes, entry_of, committed, embeds.device)
            predict, regress = self.head(
                embeds, parent_feat[None], positions, mask=mask, cache=self.cache
            )
            for i in frontier:
                entry_of[i] = committed + len(entry_of)
            logp = torch.log_softmax(
                self.head.draft_logits(predict[0], self.lm_head_weight), dim=-1
            )
            child = logp.topk(k, dim=-1)
            parent_scores = torch.tensor([nodes[i].score for i in frontier])
            scores = (parent_scores[:, None] + child.values.float().cpu()).flatten()
            child_ids = self.head.to_token_ids(child.indices).flatten().tolist()
            first_child = len(nodes)
            for n, (tok, sc) in enumerate(zip(child_ids, scores.tolist(), strict=True)):
                parent = frontier[n // k]
                nodes.append(_Node(tok, parent, sc, nodes[parent].depth + 1))
            best = scores.topk(min(k, scores.numel())).indices
            frontier = [first_child + int(b) for b in best]
            parent_feat = regress[0][(best // k).to(regress.device)]
            self._step_seconds = time.perf_counter() - started
        self.cache.crop(committed)
        return self._rerank(nodes, cfg.total_tokens - 1)

    def _worth_expanding(
        self, nodes: list[_Node], frontier: list[int], step: int, context: int
    ) -> bool:
        """Whether the best frontier node's calibrated path probability pays for a step."""
        if self.budget is None or not frontier:
            return bool(frontier)
        best = max(nodes[i].score for i in frontier)
        return self.budget.worth_expanding(math.exp(best), step + 2, self._step_seconds, context)

    @staticmethod
    def _tree_mask(
        frontier: list[int],
        nodes: list[_Node],
        entry_of: dict[int, int],
        committed: int,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Each frontier row sees the committed pairs, its expanded ancestors and itself.

        Built in numpy on the CPU (a Python loop of single writes, each a fraction of a
        microsecond there and a few in torch) and moved to ``device`` once, as SDPA needs
        the mask on the device of the head's queries."""
        past = committed + len(entry_of)
        rows = len(frontier)
        mask = np.zeros((rows, past + rows), dtype=bool)
        mask[:, :committed] = True
        for r, i in enumerate(frontier):
            mask[r, past + r] = True
            parent = nodes[i].parent
            while parent >= 0:
                mask[r, entry_of[parent]] = True
                parent = nodes[parent].parent
        return torch.from_numpy(mask)[None, None].to(device)

    @staticmethod
    def _rerank(nodes: list[_Node], budget: int) -> DraftTree:
        """The ``budget`` best nodes by cumulative log-probability, kept as a valid tree."""
        order = sorted(range(len(nodes)), key=lambda i: (-nodes[i].score, nodes[i].depth))
        chosen: set[int] = set()
        for i in order:
            if len(chosen) >= budget:
                break
            if nodes[i].parent < 0 or nodes[i].parent in chosen:
                chosen.add(i)
        kept = sorted(chosen, key=lambda i: (nodes[i].depth, -nodes[i].score))
        row = {i: r + 1 for r, i in enumerate(kept)}
        tokens = [nodes[i].token for i in kept]
        parents = [0 if nodes[i].parent < 0 else row[nodes[i].parent] for i in kept]
        scores = [math.exp(nodes[i].score) for i in kept]
        return DraftTree(tokens=tokens, parents=parents, scores=scores)
