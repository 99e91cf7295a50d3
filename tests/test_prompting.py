import pytest

from alignspec.errors import AlignspecError
from alignspec.prompting import (
    check_messages,
    check_prompt_ids,
    check_text,
    fit_context,
    truncate_middle,
)


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


def test_check_text_refuses_lone_surrogates_and_non_strings():
    assert check_text("héllo ✓", "x") == "héllo ✓"
    with pytest.raises(AlignspecError, match="the prompt is not valid Unicode text"):
        check_text("a\udcffb", "the prompt")
    with pytest.raises(AlignspecError, match="the prompt must be a string, got int"):
        check_text(5, "the prompt")


def test_check_messages_needs_known_roles_and_string_content():
    ok = [{"role": r, "content": "x"} for r in ("system", "user", "assistant", "tool")]
    assert check_messages(tuple(ok)) == ok
    with pytest.raises(AlignspecError, match="unknown role 'wizard'"):
        check_messages([{"role": "wizard", "content": "x"}])
    with pytest.raises(AlignspecError, match="content of message 1 must be a string"):
        check_messages([ok[0], {"role": "user", "content": 5}])
    with pytest.raises(AlignspecError, match="a string or a list of chat messages"):
        check_messages({"role": "user", "content": "x"})


def test_check_prompt_ids_needs_ints_inside_the_vocabulary():
    assert check_prompt_ids((0, 5, 9), 10) == [0, 5, 9]
    for bad in ([10], [-1], [1.0], [True], ["3"]):
        with pytest.raises(AlignspecError, match=r"prompt_ids\[0\]"):
            check_prompt_ids(bad, 10)
    with pytest.raises(AlignspecError, match="the prompt is empty"):
        check_prompt_ids([], 10)
