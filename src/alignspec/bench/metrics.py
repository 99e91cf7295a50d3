"""Speed and acceptance metrics computed from benchmark run records.

Everything here is pure Python over :class:`RunRecord` rows, so results can be recomputed
from saved JSONL files without a model or a GPU.

Record format (one JSON object per line, a superset of Spec-Bench's answer files so that
Spec-Bench's own ``evaluation/speed.py`` can read our files)::

    {
      "question_id": 81,                # int (Spec-Bench) or str (HumanEval, Multi-News)
      "category": "writing",            # dataset category
      "group": "multi-turn",            # reporting group (see datasets.SPEC_BENCH_GROUPS)
      "method": "aasd",                 # decoding method name
      "model_id": "qwen2.5-0.5b",       # target model (Spec-Bench's field name)
      "choices": [{
        "index": 0,
        "turns": ["answer 1", "answer 2"],      # decoded text per turn
        "new_tokens": [212, 180],               # generated tokens per turn
        "wall_time": [3.1, 2.4],                # seconds per turn, prefill included
        "accept_lengths": [3, 1, 4, ...],       # committed tokens per round (bonus included),
                                                #   flattened over turns
        "proposed_lengths": [5, 0, 5, ...],     # per round: proposed draft depth (longest
                                                #   root-to-leaf path, root excluded)
        "proposed_nodes": [12, 0, 9, ...],      # optional: draft tree size per round
        "draft_time": 0.8,                      # seconds spent drafting, all turns
        "verify_time": 4.2,                     # seconds spent in target forwards, all turns
        "token_ids": [[...], [...]]             # generated token ids per turn
      }],
      "peak_memory_mb": 1534.2
    }

Unknown keys are kept in ``extra`` and written back, so records round-trip unchanged.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from alignspec.errors import AlignspecError
from alignspec.stats import SpecCounters

SpeedupMode = Literal["mean_of_ratios", "spec_bench"]

_CHOICE_KEYS = (
    "index",
    "turns",
    "new_tokens",
    "wall_time",
    "accept_lengths",
    "proposed_lengths",
    "proposed_nodes",
    "draft_time",
    "verify_time",
    "token_ids",
)
_RECORD_KEYS = ("question_id", "category", "group", "method", "model_id", "choices")
_RECORD_KEYS_ALL = (*_RECORD_KEYS, "peak_memory_mb")


# ----------------------------------------------------------------------------- record format


@dataclass
class Choice:
    """One generation of one prompt (Spec-Bench's ``choices[i]``), all turns together."""

    index: int = 0
    turns: list[str] = field(default_factory=list)
    new_tokens: list[int] = field(default_factory=list)
    wall_time: list[float] = field(default_factory=list)
    accept_lengths: list[int] = field(default_factory=list)
    proposed_lengths: list[int] = field(default_factory=list)
    proposed_nodes: list[int] = field(default_factory=list)
    draft_time: float = 0.0
    verify_time: float = 0.0
    token_ids: list[list[int]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict; ``extra`` keys are merged back at top level."""
        out: dict[str, Any] = {key: getattr(self, key) for key in _CHOICE_KEYS}
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Choice:
        """Build from a dict, tolerating Spec-Bench files that lack our extra fields."""
        known = {key: data[key] for key in _CHOICE_KEYS if key in data}
        extra = {key: value for key, value in data.items() if key not in _CHOICE_KEYS}
        return cls(**known, extra=extra)


@dataclass
class RunRecord:
    """One benchmark prompt as run by one method: a Spec-Bench-compatible answer row."""

    question_id: str | int
    category: str
    group: str
    method: str
    choices: list[Choice]
    model_id: str | None = None
    peak_memory_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def choice(self) -> Choice:
        """The first choice, the only one a greedy benchmark produces."""
        if not self.choices:
            raise AlignspecError(f"Record for question {self.question_id!r} has no choices.")
        return self.choices[0]

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict in the documented record format."""
        out: dict[str, Any] = {
            "question_id": self.question_id,
            "category": self.category,
            "group": self.group,
            "method": self.method,
            "model_id": self.model_id,
            "choices": [c.to_json() for c in self.choices],
            "peak_memory_mb": self.peak_memory_mb,
        }
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRecord:
        """Build from a dict; a Spec-Bench row without ``method``/``group`` gets sensible ones."""
        method = data.get("method") or data.get("model_id") or "unknown"
        return cls(
            question_id=data["question_id"],
            category=data.get("category", ""),
            group=data.get("group") or _group_for_category(data.get("category", "")),
            method=method,
            choices=[Choice.from_json(c) for c in data.get("choices", [])],
            model_id=data.get("model_id"),
            peak_memory_mb=data.get("peak_memory_mb"),
            extra={k: v for k, v in data.items() if k not in _RECORD_KEYS_ALL},
        )


def _group_for_category(category: str) -> str:
    """Spec-Bench rows carry no group; derive it so old answer files can be summarised."""
    from alignspec.bench.datasets import MT_BENCH_CATEGORIES

    return "multi-turn" if category in MT_BENCH_CATEGORIES else category


def write_records(path: str | os.PathLike[str], records: Iterable[RunRecord]) -> None:
    """Write records as JSONL (one row per prompt), creating parent folders."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")


def read_records(path: str | os.PathLike[str]) -> list[RunRecord]:
    """Read a JSONL file written by :func:`write_records` or by Spec-Bench."""
    source = Path(path)
    if not source.is_file():
        raise AlignspecError(f"Run record file {source} does not exist.")
    with source.open(encoding="utf-8") as handle:
        return [RunRecord.from_json(json.loads(line)) for line in handle if line.strip()]


# ----------------------------------------------------------------------------- acceptance


def counters_of(records: Sequence[RunRecord]) -> SpecCounters:
    """The speculation counters of every round of ``records`` (one definition: stats.py).

    Peers record no rounds, so their counters are empty and every figure is NaN.
    """
    total = SpecCounters()
    for record in records:
        choice = record.choice
        if len(choice.proposed_nodes) == len(choice.accept_lengths):
            total += SpecCounters.from_rounds(choice.accept_lengths, choice.proposed_nodes)
    return total


# ----------------------------------------------------------------------------- speed


def prompt_tokens_per_second(record: RunRecord) -> float:
    """New tokens / wall time of one prompt, summed over its turns (Spec-Bench's unit)."""
    choice = record.choice
    seconds = sum(choice.wall_time)
    if seconds <= 0:
        raise AlignspecError(f"Record for question {record.question_id!r} has no wall time.")
    return sum(choice.new_tokens) / seconds


def _by_question(records: Iterable[RunRecord]) -> dict[str | int, RunRecord]:
    """Index records by question id, refusing duplicates that would skew a matched mean."""
    index: dict[str | int, RunRecord] = {}
    for record in records:
        if record.question_id in index:
            raise AlignspecError(
                f"Question {record.question_id!r} appears twice in the {record.method} records."
            )
        index[record.question_id] = record
    return index


def matched_pairs(
    method_records: Iterable[RunRecord], baseline_records: Iterable[RunRecord]
) -> list[tuple[RunRecord, RunRecord]]:
    """Pair method and baseline records by question id (method order); unmatched are dropped."""
    baseline = _by_question(baseline_records)
    method = _by_question(method_records)
    pairs = [(rec, baseline[qid]) for qid, rec in method.items() if qid in baseline]
    if not pairs:
        raise AlignspecError("Method and baseline records share no question_id to compare.")
    return pairs


def speedup(
    method_records: Iterable[RunRecord],
    baseline_records: Iterable[RunRecord],
    mode: SpeedupMode = "mean_of_ratios",
) -> float:
    """Speedup of a method over the baseline, on the prompts both ran (matched by question_id).

    For each prompt, tokens/s = sum of new tokens over its turns / sum of wall time over its
    turns (prefill included).

    * ``mode="mean_of_ratios"`` (default): mean over prompts of
      ``method tokens/s / baseline tokens/s``. Every prompt weighs the same whatever its
      absolute speed.
    * ``mode="spec_bench"``: what Spec-Bench's ``evaluation/speed.py`` actually computes, the
      ratio of means: ``mean(method tokens/s per prompt) / mean(baseline tokens/s per prompt)``.
      Spec-Bench averages each file over all its rows of the task without matching ids (the
      same thing when both files hold the same prompts), and it recounts the baseline's new
      tokens by re-tokenising the answer text (``len(tokenizer(turn).input_ids) - 1``); here
      both sides use the recorded ``new_tokens``.
    """
    pairs = matched_pairs(method_records, baseline_records)
    if mode == "mean_of_ratios":
        return _mean(_prompt_ratios(pairs))
    if mode == "spec_bench":
        method_speeds = [prompt_tokens_per_second(m) for m, _ in pairs]
        baseline_speeds = [prompt_tokens_per_second(b) for _, b in pairs]
        return _mean(method_speeds) / _mean(baseline_speeds)
    raise AlignspecError(f"Unknown speedup mode {mode!r}; choose mean_of_ratios or spec_bench.")


#: Student's t 0.975 quantiles for 1..30 degrees of freedom (past 30 the normal's 1.96)
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def speedup_ci95(
    method_records: Iterable[RunRecord], baseline_records: Iterable[RunRecord]
) -> float:
    """Half-width of a 95% confidence interval of :func:`speedup` (the mean of per-prompt
    ratios): Student's t quantile times the ratios' standard error; NaN under two prompts.

    On a shared cloud CPU the same prompt's ratio moves by several percent from one run to
    the next, so a group of five prompts at 0.95x may be level with the baseline. The interval
    says whether a group's speedup differs from 1.0 by more than that scatter. It covers the
    prompts' own spread as well, and treats them as a sample of their group.
    """
    ratios = _prompt_ratios(matched_pairs(method_records, baseline_records))
    n = len(ratios)
    if n < 2:
        return math.nan
    mean = _mean(ratios)
    sd = math.sqrt(sum((r - mean) ** 2 for r in ratios) / (n - 1))
    quantile = T975[n - 2] if n - 1 <= len(T975) else 1.96
    return quantile * sd / math.sqrt(n)


def _prompt_ratios(pairs: Sequence[tuple[RunRecord, RunRecord]]) -> list[float]:
    """Per matched prompt: the method's tokens/s over the baseline's."""
    return [prompt_tokens_per_second(m) / prompt_tokens_per_second(b) for m, b in pairs]


def _mean(values: Sequence[float]) -> float:
    """Arithmetic mean, NaN for an empty sequence."""
    return sum(values) / len(values) if values else math.nan


def first_divergence(a: Sequence[Any], b: Sequence[Any]) -> int | None:
    """Index of the first differing element (or the shorter length), None when identical."""
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def outputs_identical(method: RunRecord, baseline: RunRecord) -> bool:
    """Whether two runs of a prompt produced the same output, by token ids when both have them.

    Token ids are the precise test; decoded text is the fallback for files (such as
    Spec-Bench's) that do not store ids.
    """
    a, b = method.choice, baseline.choice
    if a.token_ids and b.token_ids:
        return [list(t) for t in a.token_ids] == [list(t) for t in b.token_ids]
    return list(a.turns) == list(b.turns)


def identical_share(
    method_records: Iterable[RunRecord], baseline_records: Iterable[RunRecord]
) -> float:
    """Share of matched prompts whose output equals the baseline's (1.0 for lossless greedy)."""
    pairs = matched_pairs(method_records, baseline_records)
    return sum(outputs_identical(m, b) for m, b in pairs) / len(pairs)


# ----------------------------------------------------------------------------- summaries


def summarize_group(
    records: Sequence[RunRecord], baseline_records: Sequence[RunRecord] | None = None
) -> dict[str, Any]:
    """Speed and acceptance summary of one method on one group of prompts.

    Keys: ``n_prompts``, ``new_tokens``, ``wall_time``, ``tokens_per_s`` (mean over prompts of
    per-prompt tokens/s, as Spec-Bench reports it), every figure of
    :meth:`alignspec.stats.SpecCounters.figures` (``tau``, ``mean_acceptance_length``,
    ``acceptance_rate``, ``per_position_acceptance``, the raw counters, ...), ``rounds``,
    ``draft_time_share``, ``verify_time_share``, ``peak_memory_mb``; with baseline records also
    ``baseline_tokens_per_s``, ``speedup`` (mean of per-prompt ratios), ``speedup_ci95`` (the
    half-width of its 95% interval), ``speedup_spec_bench`` (ratio of means),
    ``identical_share`` and ``n_matched``. Acceptance figures are NaN when no round proposed a
    draft (e.g. the baseline), tau is NaN for peers (no rounds observed).
    """
    if not records:
        raise AlignspecError("Cannot summarise an empty set of records.")
    counters = counters_of(records)
    wall = sum(sum(r.choice.wall_time) for r in records)
    summary: dict[str, Any] = {
        "n_prompts": len(records),
        "new_tokens": sum(sum(r.choice.new_tokens) for r in records),
        "wall_time": wall,
        "tokens_per_s": _mean([prompt_tokens_per_second(r) for r in records]),
        **counters.figures(),
        "rounds": counters.num_rounds,
        "draft_time_share": _share(sum(r.choice.draft_time for r in records), wall),
        "verify_time_share": _share(sum(r.choice.verify_time for r in records), wall),
        "prefill_time_share": _share(_extra_total(records, "prefill_time"), wall),
        "overhead_ms_per_round": 1e3
        * _share(_extra_total(records, "overhead_time"), counters.num_rounds),
        "peak_memory_mb": _max_memory(records),
    }
    if baseline_records:
        summary.update(_baseline_summary(records, baseline_records))
    return summary


def _baseline_summary(
    records: Sequence[RunRecord], baseline_records: Sequence[RunRecord]
) -> dict[str, Any]:
    """Fields that compare a method with the baseline on matched prompts."""
    pairs = matched_pairs(records, baseline_records)
    method_side = [m for m, _ in pairs]
    baseline_side = [b for _, b in pairs]
    return {
        "n_matched": len(pairs),
        "baseline_tokens_per_s": _mean([prompt_tokens_per_second(b) for b in baseline_side]),
        "speedup": speedup(method_side, baseline_side, "mean_of_ratios"),
        "speedup_ci95": speedup_ci95(method_side, baseline_side),
        "speedup_spec_bench": speedup(method_side, baseline_side, "spec_bench"),
        "identical_share": identical_share(method_side, baseline_side),
    }


def _extra_total(records: Sequence[RunRecord], key: str) -> float:
    """Sum of a per-turn timing kept in the records' extra fields (NaN if none has it)."""
    values = [v for r in records for v in r.choice.extra.get(key) or [] if v is not None]
    return float(sum(values)) if values else math.nan


def _share(part: float, whole: float) -> float:
    """part / whole, NaN when nothing was timed."""
    return part / whole if whole > 0 else math.nan


def _max_memory(records: Sequence[RunRecord]) -> float:
    """Largest recorded peak memory, NaN when none was recorded."""
    values = [r.peak_memory_mb for r in records if r.peak_memory_mb is not None]
    return max(values) if values else math.nan


def summarize_methods(
    records_by_method: Mapping[str, Sequence[RunRecord]],
    baseline: str | None = None,
    group_order: Sequence[str] | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Summaries for every method and group: ``{method: {group: summarize_group(...)}}``.

    Groups come in ``group_order`` (default: first appearance), followed by ``overall`` when
    there is more than one group. When ``baseline`` names one of the methods, every method
    (the baseline included, as a sanity check: speedup 1.0) is compared with it per group.
    This is the ``summary`` that :mod:`alignspec.bench.report` renders; quality scores can be
    added under ``summary[method][group]["quality"]``.
    """
    if baseline is not None and baseline not in records_by_method:
        raise AlignspecError(f"Baseline method {baseline!r} has no records.")
    base_records = list(records_by_method[baseline]) if baseline is not None else []
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for method, records in records_by_method.items():
        groups = _group_records(records, group_order)
        if len(groups) > 1:
            groups["overall"] = list(records)
        summary[method] = {
            group: summarize_group(members, _same_group(base_records, group))
            for group, members in groups.items()
        }
    return summary


def _group_records(
    records: Sequence[RunRecord], group_order: Sequence[str] | None
) -> dict[str, list[RunRecord]]:
    """Split records by group, in the requested order, then any other groups as they appear."""
    groups: dict[str, list[RunRecord]] = {g: [] for g in group_order or ()}
    for record in records:
        groups.setdefault(record.group, []).append(record)
    return {group: members for group, members in groups.items() if members}


def _same_group(records: Sequence[RunRecord], group: str) -> list[RunRecord]:
    """Baseline records of one group (all of them for ``overall``)."""
    if group == "overall":
        return list(records)
    return [r for r in records if r.group == group]
