"""The one definition of each speculation figure, on hand-counted rounds."""

from __future__ import annotations

import math

import pytest

from alignspec.stats import GenerationStats, RoundRecord, SpecCounters, fmt


def test_counters_follow_vllm_and_spec_bench() -> None:
    # three rounds: 2 of 5 nodes accepted (+bonus), nothing drafted, 3 of 4 accepted
    c = SpecCounters.from_rounds([3, 1, 4], [5, 0, 4])
    assert (c.num_rounds, c.num_drafts, c.num_draft_tokens) == (3, 2, 9)
    assert (c.num_accepted_tokens, c.num_committed_tokens) == (5, 8)
    assert c.num_accepted_tokens_per_pos == [2, 2, 1]
    assert c.tau == pytest.approx(8 / 3)  # the round without a draft counts
    assert c.mean_acceptance_length == pytest.approx(1 + 5 / 2)  # it does not
    assert c.acceptance_rate == pytest.approx(5 / 9)
    assert c.per_position_acceptance == pytest.approx([1.0, 1.0, 0.5])
    assert c.conditional_acceptance == pytest.approx([1.0, 1.0, 0.5])
    assert c.draft_tokens_per_round == pytest.approx(3.0)


def test_plain_decoding_and_empty_runs() -> None:
    ar = SpecCounters.from_rounds([1, 1, 1], [0, 0, 0])
    assert ar.tau == 1.0
    assert math.isnan(ar.acceptance_rate) and math.isnan(ar.mean_acceptance_length)
    assert ar.per_position_acceptance == []
    empty = SpecCounters()
    assert math.isnan(empty.tau) and fmt(empty.tau) == "n/a"


def test_counters_add_up() -> None:
    a = SpecCounters.from_rounds([3, 1], [4, 2])
    b = SpecCounters.from_rounds([2, 5], [1, 6])
    total = SpecCounters.total([a, b])
    assert total == SpecCounters.from_rounds([3, 1, 2, 5], [4, 2, 1, 6])
    assert total.num_accepted_tokens_per_pos == [3, 2, 1, 1]


def test_impossible_rounds_are_refused() -> None:
    with pytest.raises(ValueError):
        SpecCounters().observe(committed=4, proposed=2)
    with pytest.raises(ValueError):
        SpecCounters().observe(committed=0, proposed=0)
    with pytest.raises(ValueError):
        SpecCounters.from_rounds([1, 2], [1])


def test_generation_stats_reads_the_counters() -> None:
    stats = GenerationStats(new_tokens=9, wall_time=1.0)
    stats.rounds = [RoundRecord(3, 5, 3, 0.0, 0.0), RoundRecord(1, 0, 0, 0.0, 0.0)]
    assert stats.tau == stats.counters.tau == 2.0
    assert stats.acceptance_rate == pytest.approx(2 / 5)
    line = stats.summary()
    assert "tau=2.00" in line and "acceptance=0.40" in line
    assert "mean_acceptance_length=3.00" in line
