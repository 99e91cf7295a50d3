"""The benchmark loop: every method on every prompt of a suite, on one loaded model.

Protocol (greedy, batch 1, as Spec-Bench):

* **Interleaved methods.** For each prompt, every method runs back to back (and, with
  ``repeats``, the whole set of methods again) before the next prompt. On a shared or
  thermally throttled machine, speed drifts over minutes; running the methods of one prompt
  within seconds of each other makes each per-prompt speed ratio compare like with like, while
  running one method over the whole suite and then the next would fold the drift into the
  speedup.
* **Conversations.** A multi-turn item is one conversation: turn 2 is asked after the model's
  own answer to turn 1, as that method produced it. Raw items (HumanEval) skip the chat
  template and continue the text. Prompts longer than the context keep their head and tail
  (``truncate="middle"``).
* **Warmup.** Before timing, each method runs the first item ``warmup`` times, untimed, with at
  most :data:`WARMUP_MAX_NEW_TOKENS` tokens per turn: enough to pay one-off costs (lazy
  imports, allocator growth, kernel selection) without spending minutes on a long answer.
* **Repeats.** Each (prompt, method) is timed ``repeats`` times and the run with the median
  total wall time is kept (the lower median for an even count, so the kept record is a real
  run, not an average of two); every repeat's wall time is stored in the record.
* **Timing.** Wall time per turn includes the prefill and excludes prompt tokenisation, for
  the engine and the transformers peers alike.

Outputs (see :mod:`alignspec.bench.outputs`): ``<method>.jsonl`` (written as prompts finish, so
an interrupted run keeps its records), ``results.json``, ``results.md``, ``speedup.png`` and
``tau.png`` in ``output_dir``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from alignspec.bench.backends import (
    Backend,
    TurnResult,
    draft_path,
    make_backends,
    resolve_methods,
)
from alignspec.bench.datasets import (
    DEFAULT_MAX_NEW_TOKENS,
    SPEC_BENCH_GROUPS,
    BenchItem,
    limit_items,
    load_suite,
)
from alignspec.bench.llamacpp import check_model, split_available
from alignspec.bench.memory import PeakMemory
from alignspec.bench.metrics import Choice, RunRecord
from alignspec.errors import AlignspecError
from alignspec.prompting import truncate_middle
from alignspec.sampling import SamplingParams

WARMUP_MAX_NEW_TOKENS = 32
"""Token budget per turn of a warmup run (warmup pays one-off costs, not a full answer)."""

FALLBACK_MAX_NEW_TOKENS = 256
"""Budget for items that carry none and a run that sets none."""


@dataclass(frozen=True)
class QuickPreset:
    """Settings for a smoke-scale run that still touches every group of a suite."""

    limit: int  # prompts per group
    max_new_tokens: int
    warmup: int = 1
    repeats: int = 1
    max_prompt_tokens: int | None = None

    def describe(self) -> str:
        cap = f", max_prompt_tokens {self.max_prompt_tokens}" if self.max_prompt_tokens else ""
        return (
            f"limit {self.limit} per group, max_new_tokens {self.max_new_tokens}{cap}, "
            f"warmup {self.warmup}, repeats {self.repeats}"
        )


QUICK_PRESETS: dict[str, QuickPreset] = {
    # 6 groups x 2 prompts (14 turns) x 64 tokens: about a minute per method on 2 CPU cores
    "spec-bench": QuickPreset(limit=2, max_new_tokens=64),
    # two long prompts: the prefill of ~3-8k tokens dominates, so keep the answers short
    "multi-news": QuickPreset(limit=2, max_new_tokens=128),
    # four completions long enough to finish most function bodies
    "humaneval": QuickPreset(limit=4, max_new_tokens=128),
    # four next-line completions; the prefixes are cut to 1024 tokens so the prefill stays short
    "lcc": QuickPreset(limit=4, max_new_tokens=64, max_prompt_tokens=1024),
}
"""``--quick``: each finishes in minutes for ``ar,pld`` on 2 CPU cores with the default model.

A question file uses the ``spec-bench`` preset (see :func:`quick_preset`)."""


def quick_preset(suite: str) -> QuickPreset:
    """The ``--quick`` preset of a suite name; question files share Spec-Bench's."""
    return QUICK_PRESETS.get(suite, QUICK_PRESETS["spec-bench"])


@dataclass
class TimedRun:
    """What one timed run produced before it becomes a record: turns and peak memory."""

    turns: list[TurnResult]
    peak_memory_mb: float

    @property
    def wall_time(self) -> float:
        return sum(t.wall_time for t in self.turns)


# ----------------------------------------------------------------------------- checks


def check_settings(
    limit: int | None,
    max_new_tokens: int | None,
    warmup: int,
    repeats: int,
    max_prompt_tokens: int | None = None,
) -> None:
    """Refuse numbers that would silently run nothing or run forever, before loading a model."""
    for flag, value, low in (
        ("--limit", limit, 1),
        ("--max-new-tokens", max_new_tokens, 1),
        ("--warmup", warmup, 0),
        ("--repeats", repeats, 1),
        ("--max-prompt-tokens", max_prompt_tokens, 16),
    ):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise AlignspecError(f"{flag} must be an integer of at least {low}, got {value!r}")


def load_items(
    suite: str | Sequence[BenchItem],
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> tuple[str, list[BenchItem]]:
    """The suite's name and its items: a suite name is loaded, ready items are just limited."""
    if isinstance(suite, str):
        items = load_suite(suite, data_dir=data_dir, limit_per_group=limit)
        name = suite
    else:
        items = limit_items(list(suite), limit)
        name = "custom"
    if not items:
        raise AlignspecError(f"the {name} suite has no prompts to run")
    return name, items


def suite_source(suite: str) -> str | None:
    """Where a suite built at run time came from (lcc: the package and its version)."""
    if suite == "lcc":
        from alignspec.bench.lcc import describe

        return describe()
    return None


def shorten_items(items: Sequence[BenchItem], tokenizer: Any, max_tokens: int) -> list[BenchItem]:
    """Middle-truncate every user turn to ``max_tokens`` tokens, as LongBench's ``pred.py`` does.

    LongBench cuts each tokenized prompt to a per-model ``max_length`` keeping both ends (the
    instruction and the question) and decodes it back to text before the chat template; this
    does the same so long-context suites can run at a prompt length a CPU can prefill.
    """
    out = []
    for item in items:
        turns = []
        for turn in item.turns:
            ids = tokenizer(turn, add_special_tokens=False)["input_ids"]
            if len(ids) > max_tokens:
                turn = tokenizer.decode(truncate_middle(ids, max_tokens))
            turns.append(turn)
        out.append(replace(item, turns=turns))
    return out


# ----------------------------------------------------------------------------- one prompt


def run_conversation(backend: Backend, item: BenchItem, max_new_tokens: int) -> list[TurnResult]:
    """Run every turn of ``item``; each turn sees the earlier turns and this method's answers."""
    results: list[TurnResult] = []
    if item.raw:
        text = ""
        for user in item.turns:
            text += user
            result = backend.run(text, True, max_new_tokens)
            text += result.text
            results.append(result)
        return results
    messages: list[dict[str, str]] = []
    for user in item.turns:
        messages.append({"role": "user", "content": user})
        result = backend.run(list(messages), False, max_new_tokens)
        messages.append({"role": "assistant", "content": result.text})
        results.append(result)
    return results


def seed_everything(seed: int) -> None:
    """Same seed before every run, so a sampling method sees the same random stream."""
    random.seed(seed)
    torch.manual_seed(seed)


def build_record(
    item: BenchItem, backend: Backend, runs: Sequence[TimedRun], model_id: str | None
) -> RunRecord:
    """The Spec-Bench-compatible record of one prompt, from the median-time run."""
    order = sorted(range(len(runs)), key=lambda i: runs[i].wall_time)
    turns = runs[order[(len(runs) - 1) // 2]].turns
    extra: dict[str, Any] = {
        "prompt_tokens": [t.prompt_tokens for t in turns],
        "finish_reason": [t.finish_reason for t in turns],
    }
    if backend.peer:
        extra["forward_passes"] = [t.forward_passes for t in turns]
    else:
        extra["prefill_time"] = [t.prefill_time for t in turns]
        extra["overhead_time"] = [t.overhead_time for t in turns]
    choice = Choice(
        turns=[t.text for t in turns],
        new_tokens=[t.new_tokens for t in turns],
        wall_time=[t.wall_time for t in turns],
        accept_lengths=[n for t in turns for n in t.accept_lengths],
        proposed_lengths=[n for t in turns for n in t.proposed_lengths],
        proposed_nodes=[n for t in turns for n in t.proposed_nodes],
        draft_time=sum(t.draft_time for t in turns),
        verify_time=sum(t.verify_time for t in turns),
        token_ids=[list(t.token_ids) for t in turns],
        extra=extra,
    )
    record = RunRecord(
        question_id=item.question_id,
        category=item.category,
        group=item.group,
        method=backend.name,
        choices=[choice],
        model_id=model_id,
        peak_memory_mb=max(r.peak_memory_mb for r in runs),
    )
    record.extra["quality"] = score_quality(item, choice.turns)
    if len(runs) > 1:
        record.extra["wall_time_repeats"] = [r.wall_time for r in runs]
    return record


def score_quality(item: BenchItem, turns: Sequence[str]) -> dict[str, float]:
    """Quality of the final turn for the groups the quality module knows, else nothing.

    An item's ``scoring`` picks the metric when its group is a free name (question files).
    """
    from alignspec.bench import quality

    scoring = item.scoring or item.group
    if scoring not in quality.QUALITY_GROUPS:
        return {}
    return quality.score_item(scoring, list(turns), item)


# ----------------------------------------------------------------------------- the loop


class _Progress:
    """A tqdm bar with the method, group, last speed and the method's running tau."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total, disable=not enabled, unit="run", dynamic_ncols=True, file=sys.stderr
        )
        self.rounds: dict[str, list[int]] = {}  # method -> [committed tokens, rounds]

    def warming(self, method: str) -> None:
        self.bar.set_description(f"warmup {method}")

    def done(self, backend: Backend, group: str, run: TimedRun) -> None:
        committed, rounds = self.rounds.setdefault(backend.name, [0, 0])
        committed += sum(sum(t.accept_lengths) for t in run.turns)
        rounds += sum(len(t.accept_lengths) for t in run.turns)
        self.rounds[backend.name] = [committed, rounds]
        tokens = sum(t.new_tokens for t in run.turns)
        speed = tokens / run.wall_time if run.wall_time > 0 else 0.0
        self.bar.set_description("bench")
        self.bar.set_postfix(
            {
                "method": backend.name,
                "group": group,
                "tok/s": f"{speed:.1f}",
                "tau": f"{committed / rounds:.2f}" if rounds else "n/a",
            },
            refresh=False,
        )
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _device(llm: Any) -> torch.device:
    return next(llm.model.parameters()).device


def _dtype(llm: Any) -> torch.dtype:
    return next(llm.model.parameters()).dtype


def _model_id(llm: Any) -> str | None:
    source = getattr(llm, "source", None)
    if source is not None:
        return str(source.name)
    return getattr(llm.model.config, "_name_or_path", None) or type(llm.model).__name__


def _timed_runs(
    backends: Sequence[Backend],
    item: BenchItem,
    max_new_tokens: int,
    repeats: int,
    seed: int,
    memory: PeakMemory,
    bar: _Progress,
    first: int = 0,
) -> dict[str, list[TimedRun]]:
    """Every method on one prompt, back to back from the ``first``-th, ``repeats`` times over.

    :func:`run_bench` starts each prompt one method later: what ran just before can change a
    method's speed, and a fixed order gives every method the same neighbour on every prompt,
    so the effect never averages out. Measured on the int8 model (AMD EPYC, 2 threads):
    eagle2, which the budget kept off, decoded at 0.92x ``ar`` on Spec-Bench summarization in a
    fixed-order run with the transformers and llama.cpp peers, and at 1.04x on the same
    prompts in one process without them.
    """
    runs: dict[str, list[TimedRun]] = {b.name: [] for b in backends}
    order = [*backends[first:], *backends[:first]]
    for _ in range(repeats):
        for backend in order:
            seed_everything(seed)
            memory.reset()
            turns = run_conversation(backend, item, max_new_tokens)
            run = TimedRun(turns, memory.peak_mb())
            runs[backend.name].append(run)
            bar.done(backend, item.group, run)
    return runs


def run_bench(
    llm: Any,
    suite: str | Sequence[BenchItem],
    methods: str | Sequence[str],
    *,
    baseline: str = "ar",
    limit: int | None = None,
    max_new_tokens: int | None = None,
    warmup: int = 1,
    repeats: int = 1,
    seed: int = 0,
    output_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    method_options: Mapping[str, Any] | None = None,
    budget: str | int = "auto",
    draft_model: Any = None,
    sampling: SamplingParams | None = None,
    progress: bool = True,
    max_prompt_tokens: int | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Benchmark ``methods`` on ``suite`` with ``llm`` and write every output file.

    ``suite`` is a suite name (``spec-bench``, ``multi-news``, ``humaneval``, ``lcc``), the path
    of a Spec-Bench-format ``.jsonl`` question file, or a list of :class:`BenchItem`;
    ``limit`` keeps that many prompts per group; ``max_new_tokens`` overrides each item's
    budget. ``methods`` are names from
    :data:`alignspec.methods.REGISTRY`, :data:`alignspec.bench.peers.PEERS` or
    :data:`alignspec.bench.llamacpp.LLAMACPP_PEERS` (a list or a comma-separated string); the
    ``baseline`` leads the list, added if not listed. llama.cpp peers are skipped, with one line
    on stderr, when llama-cpp-python is not installed.
    ``method_options`` apply to every listed method that takes them. ``draft_model`` is a
    loaded LLM or a model path, for ``hf-assisted`` and methods with a ``draft_model`` option.
    ``budget`` sizes every engine method's trees (``"auto"`` or ``N``, see
    :mod:`alignspec.budget`). ``sampling`` (default greedy) applies to every engine method;
    its ``seed`` should stay ``None``: torch's generator is seeded with ``seed`` before every
    run, so each method draws from the same stream.

    ``max_prompt_tokens`` middle-truncates each user turn to that many tokens (see
    :func:`shorten_items`; ``None``: only the model's context limits it).

    Returns the summary (``{method: {group: metrics}}``, as written to ``results.json``
    under ``"summary"``).
    """
    from alignspec.bench.outputs import write_outputs

    check_settings(limit, max_new_tokens, warmup, repeats, max_prompt_tokens)
    names, skipped = split_available(resolve_methods(methods, baseline), baseline)
    if skipped:
        print(skipped, file=sys.stderr)
    check_model(names, getattr(llm, "source", None))
    suite_name, items = load_items(suite, data_dir, limit)
    if max_prompt_tokens is not None:
        items = shorten_items(items, llm.tokenizer, max_prompt_tokens)
    sampling = sampling or SamplingParams()
    backends = make_backends(
        llm, names, method_options, draft_model, budget=budget, sampling=sampling
    )
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def new_tokens_for(item: BenchItem) -> int:
        return (
            max_new_tokens
            or item.max_new_tokens
            or DEFAULT_MAX_NEW_TOKENS.get(suite_name, FALLBACK_MAX_NEW_TOKENS)
        )

    memory = PeakMemory(_device(llm))
    model_id = _model_id(llm)
    started = datetime.now().astimezone()
    records: dict[str, list[RunRecord]] = {b.name: [] for b in backends}
    bar = _Progress(len(items) * len(backends) * repeats, progress)
    try:
        for backend in backends:
            bar.warming(backend.name)
            for _ in range(warmup):
                seed_everything(seed)
                warm = min(new_tokens_for(items[0]), WARMUP_MAX_NEW_TOKENS)
                run_conversation(backend, items[0], warm)
        with ExitStack() as stack:
            files = {
                b.name: stack.enter_context((out_dir / f"{b.name}.jsonl").open("w"))
                for b in backends
            }
            for i, item in enumerate(items):
                runs = _timed_runs(
                    backends,
                    item,
                    new_tokens_for(item),
                    repeats,
                    seed,
                    memory,
                    bar,
                    first=i % len(backends),
                )
                for backend in backends:
                    record = build_record(item, backend, runs[backend.name], model_id)
                    records[backend.name].append(record)
                    files[backend.name].write(json.dumps(record.to_json(), ensure_ascii=False))
                    files[backend.name].write("\n")
                    files[backend.name].flush()  # an interrupted run keeps finished prompts
    finally:
        bar.close()
    config = {
        "suite": suite_name,
        "suite_source": suite_source(suite_name),
        "methods": names,
        "baseline": baseline,
        "n_prompts": len(items),
        "limit_per_group": limit,
        "max_new_tokens": max_new_tokens,
        "warmup": warmup,
        "warmup_max_new_tokens": WARMUP_MAX_NEW_TOKENS,
        "repeats": repeats,
        "timing": "median (lower median if even) of repeats, per prompt and method",
        "order": "interleaved: every method back to back on each prompt, starting one method "
        "later on each prompt",
        "seed": seed,
        "max_prompt_tokens": max_prompt_tokens,
        "method_options": dict(method_options or {}),
        "budget": budget,
        "sampling": dataclasses.asdict(sampling),
        "draft_model": draft_path(draft_model),
        "model": model_id,
        "memory": memory.kind,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    group_order = SPEC_BENCH_GROUPS if suite_name == "spec-bench" else None
    return write_outputs(out_dir, llm, items, backends, records, config, group_order)
