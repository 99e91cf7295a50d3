"""Speed and acceptance metrics on hand-made records with hand-computed answers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from alignspec.bench.metrics import (
    Choice,
    RunRecord,
    first_divergence,
    identical_share,
    read_records,
    speedup,
    speedup_ci95,
    summarize_group,
    summarize_methods,
    write_records,
)
from alignspec.errors import AlignspecError


def record(
    qid: int | str,
    new_tokens: list[int],
    wall_time: list[float],
    method: str = "m",
    group: str = "qa",
    accept: list[int] | None = None,
    proposed: list[int] | None = None,
    token_ids: list[list[int]] | None = None,
) -> RunRecord:
    """A one-choice record with just the fields a test needs."""
    choice = Choice(
        turns=[f"t{i}" for i in range(len(new_tokens))],
        new_tokens=new_tokens,
        wall_time=wall_time,
        accept_lengths=accept or [],
        proposed_lengths=proposed or [],
        proposed_nodes=proposed or [],
        token_ids=token_ids or [],
        draft_time=0.1 * sum(wall_time),
        verify_time=0.5 * sum(wall_time),
    )
    return RunRecord(qid, group, group, method, [choice], peak_memory_mb=100.0)


def two_prompt_example() -> tuple[list[RunRecord], list[RunRecord]]:
    """Prompt 1: 100 vs 50 tok/s (2 turns); prompt 2: 30 vs 20 tok/s."""
    method = [
        record(1, [100, 50], [1.0, 0.5], method="fast"),
        record(2, [30], [1.0], method="fast"),
    ]
    baseline = [
        record(2, [30], [1.5], method="base"),  # different order on purpose
        record(1, [100, 50], [2.0, 1.0], method="base"),
        record(3, [10], [1.0], method="base"),  # unmatched: ignored
    ]
    return method, baseline


def test_speedup_mean_of_ratios_by_hand() -> None:
    method, baseline = two_prompt_example()
    # ratios 100/50 = 2.0 and 30/20 = 1.5 -> mean 1.75
    assert speedup(method, baseline) == pytest.approx(1.75)


def test_speedup_spec_bench_ratio_of_means_by_hand() -> None:
    method, baseline = two_prompt_example()
    # Spec-Bench: mean(100, 30) / mean(50, 20) = 65 / 35
    assert speedup(method, baseline, mode="spec_bench") == pytest.approx(65 / 35)


def test_speedup_ci95_by_hand() -> None:
    method, baseline = two_prompt_example()
    # ratios 2.0 and 1.5: sd = 0.3536, standard error 0.25, t(0.975, 1 df) = 12.706
    assert speedup_ci95(method, baseline) == pytest.approx(12.706 * 0.25)
    three = [record(q, [10], [1.0], method="fast") for q in (1, 2, 3)]
    base = [record(q, [10], [t], method="base") for q, t in ((1, 1.0), (2, 1.2), (3, 1.4))]
    # ratios 1.0, 1.2, 1.4: sd 0.2, standard error 0.2 / sqrt(3), t(0.975, 2 df) = 4.303
    assert speedup_ci95(three, base) == pytest.approx(4.303 * 0.2 / math.sqrt(3))
    same = [record(q, [10], [1.0], method="base") for q in (1, 2, 3)]
    assert speedup_ci95(three, same) == 0.0  # no scatter, no doubt
    assert math.isnan(speedup_ci95(three[:1], base))  # one prompt: no interval


def test_speedup_ci95_covers_the_true_ratio() -> None:
    """Per-prompt ratios scattered around 1.0 (a method level with the baseline): the 95%
    interval holds 1.0 in about 95% of groups of five, and a plain 2-sigma rule would not."""
    import random

    rng = random.Random(0)
    trials, covered = 2000, 0
    for _ in range(trials):
        fast = [record(q, [100], [1.0], method="fast") for q in range(5)]
        base = [record(q, [100], [rng.gauss(1.0, 0.05)], method="base") for q in range(5)]
        centre, margin = speedup(fast, base), speedup_ci95(fast, base)
        covered += centre - margin <= 1.0 <= centre + margin
    assert 0.93 <= covered / trials <= 0.97


def test_speedup_errors() -> None:
    method, baseline = two_prompt_example()
    with pytest.raises(AlignspecError, match="share no question_id"):
        speedup(method, [record(9, [1], [1.0])])
    with pytest.raises(AlignspecError, match="twice"):
        speedup([*method, method[0]], baseline)
    with pytest.raises(AlignspecError, match="mode"):
        speedup(method, baseline, mode="median")  # type: ignore[arg-type]


def test_identity_and_divergence() -> None:
    same = record(1, [3], [1.0], token_ids=[[5, 6, 7]])
    other = record(1, [3], [1.0], token_ids=[[5, 6, 8]])
    base = record(1, [3], [1.0], method="base", token_ids=[[5, 6, 7]])
    assert identical_share([same], [base]) == 1.0
    assert identical_share([other], [base]) == 0.0
    assert first_divergence([5, 6, 7], [5, 6, 8]) == 2
    assert first_divergence([5, 6], [5, 6, 7]) == 2
    assert first_divergence([1], [1]) is None


def test_record_round_trip_and_spec_bench_rows(tmp_path: Path) -> None:
    original = record(7, [4, 2], [0.5, 0.25], accept=[3, 1, 2], proposed=[4, 0, 2])
    original.extra["tstamp"] = 1.5
    original.choices[0].extra["decoding_steps"] = [2, 1]
    path = tmp_path / "runs" / "m.jsonl"
    write_records(path, [original])
    (loaded,) = read_records(path)
    assert loaded == original
    spec_bench_row = {
        "question_id": 81,
        "category": "writing",
        "model_id": "vicuna",
        "choices": [{"index": 0, "turns": ["a"], "new_tokens": [3], "wall_time": [1.0]}],
    }
    row = RunRecord.from_json(spec_bench_row)
    assert (row.group, row.method) == ("multi-turn", "vicuna")
    assert row.choice.accept_lengths == []
    with pytest.raises(AlignspecError, match="does not exist"):
        read_records(tmp_path / "missing.jsonl")


def test_summarize_group_fields() -> None:
    method, baseline = two_prompt_example()
    method[0].choices[0].accept_lengths = [3, 1, 4]
    method[0].choices[0].proposed_lengths = [5, 0, 5]
    method[0].choices[0].proposed_nodes = [5, 0, 5]
    summary = summarize_group(method, baseline)
    assert summary["n_prompts"] == 2 and summary["new_tokens"] == 180
    assert summary["tokens_per_s"] == pytest.approx(65.0)
    assert summary["tau"] == pytest.approx(8 / 3)
    assert summary["acceptance_rate"] == pytest.approx(0.5)
    assert summary["mean_acceptance_length"] == pytest.approx(1 + 5 / 2)
    assert summary["num_accepted_tokens_per_pos"] == [2, 2, 1]
    assert summary["speedup"] == pytest.approx(1.75)
    assert summary["speedup_ci95"] == pytest.approx(12.706 * 0.25)
    assert summary["speedup_spec_bench"] == pytest.approx(65 / 35)
    assert summary["baseline_tokens_per_s"] == pytest.approx(35.0)
    assert summary["draft_time_share"] == pytest.approx(0.1)
    assert summary["peak_memory_mb"] == 100.0
    assert summary["n_matched"] == 2


def test_summarize_methods_groups_and_overall() -> None:
    fast = [record(1, [10], [1.0], "fast", "qa"), record(2, [10], [1.0], "fast", "rag")]
    base = [record(1, [10], [2.0], "base", "qa"), record(2, [10], [4.0], "base", "rag")]
    summary = summarize_methods({"base": base, "fast": fast}, baseline="base")
    assert list(summary["fast"]) == ["qa", "rag", "overall"]
    assert summary["fast"]["qa"]["speedup"] == pytest.approx(2.0)
    assert summary["fast"]["rag"]["speedup"] == pytest.approx(4.0)
    assert summary["fast"]["overall"]["speedup"] == pytest.approx(3.0)
    assert summary["base"]["overall"]["speedup"] == pytest.approx(1.0)
    assert math.isnan(summary["fast"]["qa"]["tau"])
    with pytest.raises(AlignspecError, match="Baseline"):
        summarize_methods({"fast": fast}, baseline="base")
