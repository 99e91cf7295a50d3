import numpy as np
import pytest

from alignspec.drafters import retrieval
from alignspec.drafters.retrieval import (
    History,
    continuation_trie,
    frequency_trie,
    longest_suffix_matches,
)
from alignspec.targets.native import cpu_kernel


@pytest.fixture(autouse=True, params=["numpy", "kernel"])
def path(request, monkeypatch):
    """Every test runs on the numpy code and on the compiled kernel (same results)."""
    if request.param == "kernel":
        kernel = cpu_kernel.load()
        if kernel is None:
            pytest.skip("alignspec's CPU kernel does not build here")
        monkeypatch.setattr(retrieval.cpu_kernel, "loaded", lambda: kernel)
    else:
        monkeypatch.setattr(retrieval.cpu_kernel, "loaded", lambda: None)
    return request.param


def arr(xs):
    return np.asarray(xs, dtype=np.int64)


def test_longest_suffix_wins_over_shorter():
    #            0  1  2  3  4  5  6  7  8  9
    toks = arr([7, 1, 2, 3, 9, 2, 3, 8, 1, 2, 3])
    n, starts = longest_suffix_matches(toks, max_n=4, min_n=1)
    assert n == 3  # "1 2 3" occurs at 1..3, continuation starts at 4
    assert starts.tolist() == [4]


def test_all_occurrences_of_best_length_most_recent_last():
    toks = arr([5, 6, 1, 5, 6, 2, 5, 6])
    n, starts = longest_suffix_matches(toks, max_n=3, min_n=1)
    assert n == 2
    assert starts.tolist() == [2, 5]
    n, starts = longest_suffix_matches(toks, max_n=3, min_n=1, limit=1)
    assert starts.tolist() == [5]


def test_min_ngram_and_no_match():
    toks = arr([1, 2, 3, 4, 3])
    assert longest_suffix_matches(toks, max_n=3, min_n=2)[0] == 0
    n, starts = longest_suffix_matches(toks, max_n=3, min_n=1)
    assert n == 1 and starts.tolist() == [3]
    assert longest_suffix_matches(arr([4]), 3, 1)[0] == 0
    assert longest_suffix_matches(arr([1, 2, 3]), 3, 1)[0] == 0


def test_match_does_not_run_past_start_of_text():
    toks = arr([2, 2, 2])
    n, starts = longest_suffix_matches(toks, max_n=5, min_n=1)
    assert n == 2 and starts.tolist() == [2]


def test_continuations_clip_at_end():
    toks = arr([1, 2, 3, 4, 5])
    trie = continuation_trie(toks, arr([1, 3]), 3)
    # the most recent start (3) first on ties: [4, 5], then [2, 3, 4]
    assert trie.tokens == [4, 2, 5, 3, 4]
    assert trie.parents == [-1, -1, 0, 1, 3]
    assert trie.sources == [3, 1, 4, 2, 3]


def test_frequency_trie_orders_by_count():
    # continuations, most recent first: [1, 2, 3], [4, 5, 0], [1, 2, 6], [1, 7, 0]
    toks = arr([1, 7, 0, 1, 2, 6, 0, 4, 5, 0, 1, 2, 3, 0])
    tree = frequency_trie(toks, arr([0, 3, 7, 10]), 3, max_nodes=10)
    # prefix (1,) x3 first; (1,2) x2; then single-count prefixes shorter first
    assert tree.tokens[0] == 1 and tree.parents[0] == 0
    assert tree.tokens[1] == 2 and tree.parents[1] == 1
    assert tree.scores[:2] == [0.75, 0.5]
    assert sorted(tree.tokens) == [0, 0, 1, 2, 3, 4, 5, 6, 7]
    small = frequency_trie(toks, arr([0, 3, 7, 10]), 3, max_nodes=2)
    assert small.tokens == [1, 2]


def brute_force_trie(toks, starts, length, recency):
    """The definition: every prefix of every continuation (most recent first) with its summed
    weight, ranked by weight, then length, then first appearance."""
    weights, sources = {}, {}
    w = 1.0
    for s in starts[::-1].tolist():
        cont = toks[s : s + length].tolist()
        for d in range(1, len(cont) + 1):
            key = tuple(cont[:d])
            weights[key] = weights.get(key, 0.0) + w
            sources.setdefault(key, s + d - 1)
        w *= recency
    return sorted(weights, key=lambda k: (-weights[k], len(k))), weights, sources


def test_trie_equals_the_definition_on_random_histories():
    rng = np.random.default_rng(1)
    for _ in range(300):
        toks = rng.integers(0, 4, int(rng.integers(2, 60)))
        starts = np.sort(
            rng.choice(len(toks), min(len(toks), int(rng.integers(1, 6))), replace=False)
        )
        length, recency = int(rng.integers(1, 8)), float(rng.choice([1.0, 0.8, 0.5]))
        trie = continuation_trie(toks, starts.astype(np.int64), length, recency)
        ranked, weights, sources = brute_force_trie(toks, starts, length, recency)
        paths = []
        for r in range(len(trie)):
            parent = trie.parents[r]
            assert parent < r
            paths.append((paths[parent] if parent >= 0 else ()) + (trie.tokens[r],))
        assert paths == ranked
        assert trie.weights == [weights[k] for k in ranked]
        assert trie.sources == [sources[k] for k in ranked]
        assert trie.depths == [len(k) for k in ranked]


def brute_force_matches(toks, max_n, min_n):
    """The definition, one length at a time from the longest."""
    toks = toks.tolist()
    for n in range(min(max_n, len(toks) - 1), min_n - 1, -1):
        suffix = toks[len(toks) - n :]
        starts = [e + 1 for e in range(n - 1, len(toks) - 1) if toks[e - n + 1 : e + 1] == suffix]
        if starts:
            return n, starts
    return 0, []


def test_matches_equal_the_definition_on_random_histories():
    rng = np.random.default_rng(0)
    for _ in range(400):
        toks = rng.integers(0, 3, int(rng.integers(1, 40)))
        for max_n, min_n in ((16, 1), (3, 1), (4, 2), (1, 1)):
            n, starts = longest_suffix_matches(toks, max_n, min_n)
            assert (n, starts.tolist()) == brute_force_matches(toks, max_n, min_n)


def test_history_appends_new_tokens_and_restarts_when_shorter():
    history = History()
    tokens = list(range(300))  # past the first capacity
    assert history.view(tokens[:10]).tolist() == tokens[:10]
    assert history.view(tokens).tolist() == tokens
    assert history.view([7, 8]).tolist() == [7, 8]
