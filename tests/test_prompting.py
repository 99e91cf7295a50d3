import pytest

from alignspec.errors import AlignspecError
from alignspec.prompting import fit_context, truncate_middle


def test_truncate_middle_keeps_both_ends():
    assert truncate_middle(list(range(10)), 4) == [0, 1, 8, 9]
    assert truncate_middle(list(range(10)), 5) == [0, 1, 2, 8, 9]
    assert truncate_middle(list(range(10)), 1) == [0]
    assert truncate_middle(list(range(10)), 0) == []
    assert truncate_middle([1, 2], 5) == [1, 2]


def test_fit_context_refuses_or_truncates():
    ids = list(range(100))
    assert fit_context(ids, max_new_tokens=10, max_context=200) == ids
    with pytest.raises(AlignspecError, match="exceeds the model's 64-token context"):
        fit_context(ids, max_new_tokens=10, max_context=64)
    cut = fit_context(ids, max_new_tokens=10, max_context=64, truncate="middle")
    assert len(cut) == 54 and cut[0] == 0 and cut[-1] == 99
    with pytest.raises(AlignspecError):
        fit_context(ids, max_new_tokens=64, max_context=64, truncate="middle")
    with pytest.raises(AlignspecError):
        fit_context(ids, max_new_tokens=1, max_context=64, truncate="left")
