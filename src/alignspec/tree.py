"""Draft trees: the unit every drafter proposes and the target verifies in one forward.

A chain is a tree with one branch, so prompt lookup, AASD, EAGLE-2 and a draft model all go
through the same mask, position and path code. Node 0 is always the *root*: the last committed
token, which is not yet in the target's KV cache. Draft nodes are numbered 1..n in topological
order (a parent always comes before its children), which keeps every accepted path increasing
and lets the cache compaction be a single ``index_select``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class DraftTree:
    """Draft tokens below a root.

    ``tokens[i]`` and ``parents[i]`` describe draft node ``i + 1``; ``parents[i]`` is the node
    index of its parent (0 for the root). ``draft_probs`` optionally holds, per draft node, the
    drafter's distribution over the vocabulary *at its parent* (what the token was drawn from);
    lossless sampling of draft-model drafts needs it, point-mass drafters leave it ``None``.
    ``scores`` optionally holds, per draft node, the drafter's estimate that the node's whole
    root path is accepted (never above its parent's); the cost-aware budget
    (:mod:`alignspec.budget`) keeps the nodes worth a row, and estimates one from depth alone
    where a drafter gives none.
    """

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    draft_probs: torch.Tensor | None = None
    scores: list[float] | None = None

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.parents):
            raise ValueError("tokens and parents must have the same length")
        if self.scores is not None and len(self.scores) != len(self.tokens):
            raise ValueError("scores must have one entry per draft node")
        for i, p in enumerate(self.parents):
            if not 0 <= p <= i:
                raise ValueError(f"node {i + 1} has parent {p}; parents must precede children")

    # ------------------------------------------------------------------ construction
    @classmethod
    def chain(cls, tokens: Sequence[int]) -> DraftTree:
        """A single branch: each token's parent is the one before it."""
        return cls(tokens=list(tokens), parents=list(range(len(tokens))))

    @classmethod
    def from_sequences(cls, sequences: Iterable[Sequence[int]], max_nodes: int) -> DraftTree:
        """Merge sequences into a trie (shared prefixes share nodes), in the given order.

        Sequences earlier in the iterable get their nodes first, so callers pass them best
        first; nodes past ``max_nodes`` are dropped (a prefix of a kept node is always kept).
        """
        tokens: list[int] = []
        parents: list[int] = []
        children: dict[tuple[int, int], int] = {}
        for seq in sequences:
            node = 0
            for tok in seq:
                key = (node, int(tok))
                nxt = children.get(key)
                if nxt is None:
                    if len(tokens) >= max_nodes:
                        break
                    tokens.append(int(tok))
                    parents.append(node)
                    nxt = len(tokens)
                    children[key] = nxt
                node = nxt
        return cls(tokens=tokens, parents=parents)

    # ------------------------------------------------------------------ structure
    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def num_rows(self) -> int:
        """Rows in the verify forward: the root plus every draft node."""
        return len(self.tokens) + 1

    def depths(self) -> list[int]:
        """Depth of every row (root = 0)."""
        depth = [0]
        for p in self.parents:
            depth.append(depth[p] + 1)
        return depth

    def max_depth(self) -> int:
        return max(self.depths())

    def children(self) -> list[list[int]]:
        """For every row, its child rows in order (siblings are tried in this order)."""
        kids: list[list[int]] = [[] for _ in range(self.num_rows)]
        for i, p in enumerate(self.parents):
            kids[p].append(i + 1)
        return kids

    def row_tokens(self, root: int) -> list[int]:
        """Input tokens of the verify forward: the root token then the draft tokens."""
        return [int(root), *self.tokens]

    def path_to(self, row: int) -> list[int]:
        """Rows from the root to ``row`` inclusive."""
        path = [row]
        while row != 0:
            row = self.parents[row - 1]
            path.append(row)
        return path[::-1]

    def ancestor_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Boolean (rows x rows) mask: row i may attend to row j iff j is i or an ancestor.

        Filled in numpy, one parent row copied per row: a copy there costs a fraction of a
        microsecond, where a torch row assignment cost microseconds, every verify."""
        n = self.num_rows
        mask = np.zeros((n, n), dtype=bool)
        mask[0, 0] = True
        for i, p in enumerate(self.parents, start=1):
            mask[i] = mask[p]
            mask[i, i] = True
        return torch.from_numpy(mask).to(device)

    def position_ids(self, offset: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Absolute positions: ``offset`` (the cache length) plus each row's depth."""
        return torch.tensor([offset + d for d in self.depths()], dtype=torch.long, device=device)

    def truncated(self, max_depth: int) -> DraftTree:
        """The subtree of nodes at depth <= ``max_depth`` (used when few tokens remain)."""
        depths = self.depths()
        if max(depths) <= max_depth:
            return self
        return self.subtree([i for i in range(1, self.num_rows) if depths[i] <= max_depth])

    def subtree(self, keep: Sequence[int]) -> DraftTree:
        """The tree of draft nodes ``keep`` (node indices, each node's parent kept too).

        Nodes keep their relative order, so parents still precede children and siblings keep
        their ranking; ``draft_probs`` and ``scores`` follow their nodes.
        """
        kept = sorted(keep)
        new_index = {0: 0}
        tokens: list[int] = []
        parents: list[int] = []
        for i in kept:
            par = self.parents[i - 1]
            if par not in new_index:
                raise ValueError(f"node {i} is kept without its parent {par}")
            tokens.append(self.tokens[i - 1])
            parents.append(new_index[par])
            new_index[i] = len(tokens)
        rows = [i - 1 for i in kept]
        probs = self.draft_probs[rows] if self.draft_probs is not None else None
        scores = [self.scores[r] for r in rows] if self.scores is not None else None
        return DraftTree(tokens=tokens, parents=parents, draft_probs=probs, scores=scores)
