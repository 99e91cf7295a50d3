"""Suffix matching over the token history, shared by prompt lookup and AASD.

The longest suffix of the history that occurs earlier is found by one vectorised pass: take
every earlier position holding the last token, then extend all candidates backwards together.
This costs O(L * n_max) numpy work per round and needs no index, so nothing is built at prefill
time even for 8k-token prompts. The continuations of its occurrences are merged into a trie
ranked by (recency-weighted) frequency.

Where alignspec's CPU kernel is already loaded (an int8 model), both run there instead
(``kernels/retrieval.cpp``, one call each, same results): right after a verify forward every
numpy call costs tens of microseconds, and AASD spent about 0.2 ms a round in these two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alignspec.targets.native import cpu_kernel
from alignspec.tree import DraftTree


def longest_suffix_matches(
    tokens: np.ndarray, max_n: int, min_n: int, limit: int | None = None
) -> tuple[int, np.ndarray]:
    """Find earlier occurrences of the longest suffix of ``tokens`` (length ``min_n..max_n``).

    Returns ``(n, starts)``: the match length and the positions where each occurrence's
    continuation starts (most recent last). ``(0, [])`` when not even ``min_n`` tokens match.
    ``limit`` keeps only the most recent occurrences.

    Every candidate (an earlier position holding the last token) is compared with the suffix at
    all ``max_n`` offsets in one ``[candidates, max_n]`` comparison: a loop over offsets made
    five numpy calls per offset, 16 offsets deep for AASD, most of a round's drafting time.
    """
    kernel = cpu_kernel.loaded()
    if kernel is not None:
        n, starts = kernel.suffix_matches(tokens, max_n, min_n, limit or 0)
        return n, starts
    length = len(tokens)
    if length < max(min_n, 1) + 1:
        return 0, np.empty(0, dtype=np.int64)
    ends = np.flatnonzero(tokens[: length - 1] == tokens[-1])  # occurrence's last token
    if ends.size == 0:
        return 0, ends
    offsets = np.arange(min(max_n, length - 1))
    idx = ends[:, None] - offsets  # [candidates, offsets]: the positions compared
    same = tokens[np.maximum(idx, 0)] == tokens[length - 1 - offsets]
    same &= idx >= 0
    run = np.logical_and.accumulate(same, axis=1).sum(axis=1)  # leading matches
    best = int(run.max())
    if best < min_n:
        return 0, np.empty(0, dtype=np.int64)
    starts = ends[run == best] + 1
    if limit is not None and starts.size > limit:
        starts = starts[-limit:]
    return best, starts


class History:
    """The request's tokens as a growing int64 buffer (capacity doubles).

    Drafters see the history as a list that only grows within a request; converting the whole
    list every round cost O(L) per round (60 us at 2,000 tokens), where this appends the new
    tokens only. A drafter starts a new one in ``begin``: the buffer trusts that the tokens it
    holds are still the list's first ones.
    """

    def __init__(self) -> None:
        self._data = np.empty(256, dtype=np.int64)
        self._n = 0

    def view(self, tokens: list[int]) -> np.ndarray:
        """The buffer brought up to ``tokens`` (whose first tokens it already holds, unless
        ``tokens`` is shorter: a new request, then it starts over)."""
        if len(tokens) < self._n:
            self._n = 0
        if len(tokens) > len(self._data):
            grown = np.empty(max(len(tokens), 2 * len(self._data)), dtype=np.int64)
            grown[: self._n] = self._data[: self._n]
            self._data = grown
        if len(tokens) > self._n:
            self._data[self._n : len(tokens)] = tokens[self._n :]
            self._n = len(tokens)
        return self._data[: self._n]


@dataclass
class Continuations:
    """The trie of the continuations after some matches, nodes ranked best first.

    Node ``r`` holds ``tokens[r]`` at depth ``depths[r]`` below the parent ``parents[r]`` (an
    earlier rank, -1 for the root); ``weights[r]`` sums the weights of the continuations
    through it and ``sources[r]`` is the history position of its token in the most recent one.
    Ranked by weight, then depth, then first appearance, so a parent precedes its children.
    """

    tokens: list[int]
    parents: list[int]
    depths: list[int]
    sources: list[int]
    weights: list[float]

    def __len__(self) -> int:
        return len(self.tokens)


def continuation_trie(
    tokens: np.ndarray,
    starts: np.ndarray,
    length: int,
    recency: float = 1.0,
    limit: int | None = None,
) -> Continuations:
    """Merge the ``length`` tokens after each of ``starts`` (ascending, as
    :func:`longest_suffix_matches` gives them) into a ranked trie, of which the ``limit`` best
    nodes are kept. The most recent start weighs 1 and the k-th most recent ``recency ** k``;
    at ``recency`` 1 a weight is a count."""
    kernel = cpu_kernel.loaded()
    if kernel is not None:
        return Continuations(*kernel.continuation_trie(tokens, starts, length, recency, limit or 0))
    trie = Continuations([], [], [], [], [])
    child: dict[tuple[int, int], int] = {}
    weight = 1.0
    for s in starts[::-1].tolist():
        node = -1
        for p, tok in enumerate(tokens[s : s + length].tolist(), start=s):
            nxt = child.get((node, tok))
            if nxt is None:
                nxt = child[(node, tok)] = len(trie.tokens)
                trie.tokens.append(tok)
                trie.parents.append(node)
                trie.depths.append(1 if node < 0 else trie.depths[node] + 1)
                trie.sources.append(p)
                trie.weights.append(0.0)
            trie.weights[nxt] += weight
            node = nxt
        weight *= recency
    order = sorted(range(len(trie.tokens)), key=lambda i: (-trie.weights[i], trie.depths[i]))
    rank = {old: new for new, old in enumerate(order)}
    order = order[:limit]
    return Continuations(
        tokens=[trie.tokens[i] for i in order],
        parents=[-1 if trie.parents[i] < 0 else rank[trie.parents[i]] for i in order],
        depths=[trie.depths[i] for i in order],
        sources=[trie.sources[i] for i in order],
        weights=[trie.weights[i] for i in order],
    )


def frequency_trie(
    tokens: np.ndarray, starts: np.ndarray, length: int, max_nodes: int
) -> DraftTree:
    """The ``max_nodes`` most frequent prefixes of the continuations after ``starts`` as a
    draft tree (siblings most frequent first; on a tie the most recent continuation's first).

    Each node's score is its share of the continuations (what the draft budget ranks nodes by).
    """
    trie = continuation_trie(tokens, starts, length, limit=max_nodes)
    total = max(1, len(starts))
    return DraftTree(
        tokens=trie.tokens,
        parents=[p + 1 for p in trie.parents],
        scores=[w / total for w in trie.weights],
    )
