import pytest

from alignspec.drafters.prompt_lookup import PromptLookupConfig, PromptLookupDrafter
from alignspec.errors import AlignspecError


def test_chain_copies_most_recent_longest_match():
    d = PromptLookupDrafter(PromptLookupConfig(max_ngram=3, min_ngram=1, draft_len=3))
    tree = d.propose([1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 2, 3])
    assert tree.tokens == [7, 8, 2] and tree.parents == [0, 1, 2]


def test_no_match_proposes_nothing():
    d = PromptLookupDrafter(PromptLookupConfig(min_ngram=2))
    assert len(d.propose([1, 2, 3, 4])) == 0


def test_tree_mode_merges_matches():
    d = PromptLookupDrafter(PromptLookupConfig(max_ngram=2, draft_len=2, tree=True))
    tree = d.propose([5, 6, 1, 2, 5, 6, 1, 3, 5, 6, 4, 4, 5, 6])
    # three occurrences of "5 6": continuations [1,2], [1,3], [4,4]
    assert tree.tokens[0] == 1 and tree.parents[0] == 0
    assert set(tree.tokens) == {1, 2, 3, 4}
    assert len(tree) == 5


def test_bad_options_are_user_errors():
    with pytest.raises(AlignspecError):
        PromptLookupConfig(max_ngram=1, min_ngram=2)
    with pytest.raises(AlignspecError):
        PromptLookupConfig(draft_len=0)


def test_a_reused_drafter_forgets_the_last_request():
    """The drafter keeps the history as a buffer it extends; ``begin`` starts it over, so a
    second request as long as the first one's text drafts from its own tokens."""
    d = PromptLookupDrafter(PromptLookupConfig(max_ngram=2, draft_len=2))
    first = [1, 2, 3, 4, 5, 1, 2]
    assert d.propose(first).tokens == [3, 4]
    second = [6, 7, 8, 9, 6, 7, 0, 6, 7]
    d.begin(second[:4], None)
    assert d.propose(second).tokens == [0, 6]
