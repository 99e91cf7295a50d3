import numpy as np

from alignspec.drafters.retrieval import (
    History,
    continuations,
    frequency_trie,
    longest_suffix_matches,
)


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
    assert continuations(toks, np.array([3, 1]), 3) == [[4, 5], [2, 3, 4]]


def test_frequency_trie_orders_by_count():
    tree = frequency_trie([[1, 2, 3], [4, 5], [1, 2, 6], [1, 7]], max_nodes=10)
    # prefix (1,) x3 first; (1,2) x2; then single-count prefixes shorter first
    assert tree.tokens[0] == 1 and tree.parents[0] == 0
    assert tree.tokens[1] == 2 and tree.parents[1] == 1
    assert sorted(tree.tokens) == [1, 2, 3, 4, 5, 6, 7]
    small = frequency_trie([[1, 2, 3], [4, 5], [1, 2, 6], [1, 7]], max_nodes=2)
    assert small.tokens == [1, 2]


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
