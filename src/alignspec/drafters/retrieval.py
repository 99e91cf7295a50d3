"""Suffix matching over the token history, shared by prompt lookup and AASD.

The longest suffix of the history that occurs earlier is found by one vectorised pass: take
every earlier position holding the last token, then extend all candidates backwards together.
This costs O(L * n_max) numpy work per round and needs no index, so nothing is built at prefill
time even for 8k-token prompts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

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


def continuations(tokens: np.ndarray, starts: np.ndarray, length: int) -> list[list[int]]:
    """The ``length`` tokens after each start (shorter near the end of the history)."""
    return [tokens[s : s + length].tolist() for s in starts]


def frequency_trie(conts: Sequence[Sequence[int]], max_nodes: int) -> DraftTree:
    """Merge continuations into a trie of the ``max_nodes`` most frequent prefixes.

    A prefix is never rarer than its extensions, so sorting by (count desc, length asc) always
    places a parent before its children; siblings are ordered most frequent first. Each node's
    score is its share of the continuations (what the draft budget ranks nodes by).
    """
    counts: Counter[tuple[int, ...]] = Counter()
    for cont in conts:
        for d in range(1, len(cont) + 1):
            counts[tuple(cont[:d])] += 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], len(kv[0])))
    total = max(1, len(conts))
    index: dict[tuple[int, ...], int] = {(): 0}
    tokens: list[int] = []
    parents: list[int] = []
    scores: list[float] = []
    for prefix, count in ranked[:max_nodes]:
        parent = index[prefix[:-1]]  # present: a parent sorts before its extensions
        tokens.append(prefix[-1])
        parents.append(parent)
        scores.append(count / total)
        index[prefix] = len(tokens)
    return DraftTree(tokens=tokens, parents=parents, scores=scores)
