"""RowLogits: rows computed as a verifier reads them, and a drafter's rows riding along."""

import torch

from alignspec.rows import ExtraRows, RowLogits, argmax
from alignspec.tree import DraftTree


def counting_head(weight: torch.Tensor, calls: list[int]):
    def head(hidden: torch.Tensor) -> torch.Tensor:
        calls.append(hidden.shape[0])
        return hidden @ weight.t()

    return head


def test_rows_are_computed_once_with_their_first_child_chain():
    gen = torch.Generator().manual_seed(0)
    weight, hidden = torch.randn(11, 5, generator=gen), torch.randn(4, 5, generator=gen)
    calls: list[int] = []
    logits = RowLogits(hidden, counting_head(weight, calls), DraftTree([1, 2, 3], [0, 1, 0]))
    torch.testing.assert_close(logits.row(0), hidden[0] @ weight.t())
    assert calls == [3]  # row 0 and its first-child chain 1 -> 2
    logits.rows([0, 1, 2])
    assert calls == [3] and logits.computed == 3


def test_extra_rows_share_the_first_head_call_and_skip_the_transform():
    gen = torch.Generator().manual_seed(1)
    weight, hidden = torch.randn(11, 5, generator=gen), torch.randn(2, 5, generator=gen)
    extra_hidden = torch.randn(3, 5, generator=gen)
    calls: list[int] = []
    got: list[torch.Tensor] = []
    logits = RowLogits(hidden, counting_head(weight, calls), DraftTree([4], [0]))
    assert logits.takes_extra_rows
    logits.transform = lambda values, rows: values + 100.0
    logits.attach(ExtraRows(extra_hidden, got.append))
    row = logits.row(0)
    assert calls == [5] and logits.computed == 5
    torch.testing.assert_close(got[0], extra_hidden @ weight.t())
    torch.testing.assert_close(row, hidden[0] @ weight.t() + 100.0)
    logits.row(1)
    assert len(got) == 1  # handed over once


def test_whole_logits_take_no_extra_rows():
    full = torch.randn(2, 7)
    got: list[torch.Tensor] = []
    logits = RowLogits.of(full)
    assert not logits.takes_extra_rows
    logits.attach(ExtraRows(torch.randn(1, 3), got.append))
    assert torch.equal(logits.row(1), full[1]) and got == []


def test_argmax_matches_torch_on_ties_and_nan() -> None:
    """The numpy fast path picks the index torch.argmax picks: the first of tied maxima,
    the first NaN, and rows of other dtypes go through torch."""
    row = torch.tensor([0.5, 2.0, -1.0, 2.0, 1.0])
    assert argmax(row) == int(row.argmax()) == 1
    nan = torch.tensor([0.5, float("nan"), 3.0, float("nan")])
    assert argmax(nan) == int(nan.argmax()) == 1
    half = row.to(torch.bfloat16)
    assert argmax(half) == 1
    logits = RowLogits.of(torch.stack([row, -row]))
    assert [logits.argmax(0), logits.argmax(1)] == [1, 2]


def test_row_index_slices_consecutive_rows_only():
    from alignspec.rows import row_index

    x = torch.arange(12.0).view(6, 2)
    for rows in ([0], [2, 3, 4], [0, 2], [3, 1], [1, 1], [0, 0, 2], []):
        index = row_index(rows)
        assert isinstance(index, slice) == (rows in ([0], [2, 3, 4]))
        assert torch.equal(x[index], x[rows])
