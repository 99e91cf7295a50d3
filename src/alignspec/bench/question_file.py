"""A user's own suite: a JSONL file of questions in Spec-Bench's format.

Each line is one JSON object::

    {"question_id": 1, "category": "support", "turns": ["first question", "follow-up"],
     "reference": ["an answer to score against"]}

``question_id`` (an integer or a string, unique in the file), ``category`` (a non-empty
string) and ``turns`` (a non-empty list of non-empty strings, asked as one conversation) are
required; ``reference`` is optional: a string or a list of strings (Spec-Bench's RAG rows hold
lists of acceptable answers, which are accepted too). Other fields are ignored, so lines of
Spec-Bench's own ``question.jsonl`` work as they are.

Items are grouped by ``category`` (the group is the category itself, in order of first
appearance). Quality is scored where a row has references: categories named like a Spec-Bench
group with a task-specific metric (``summarization``, ``translation``, ``qa``, ``rag``,
``math_reasoning``) get that metric, every other category ROUGE-L F against the references
(:data:`DEFAULT_SCORING`), a neutral choice for free text.

A broken file stops the run before the model loads with one sentence that names the file, the
line and the field, because a benchmark that silently skips bad lines reports on prompts the
user did not mean.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from alignspec.bench.datasets import DEFAULT_MAX_NEW_TOKENS, BenchItem
from alignspec.errors import AlignspecError

DEFAULT_SCORING = "text"
"""Quality group for categories without a task-specific metric: ROUGE-L F (quality.py)."""

TASK_SCORINGS: tuple[str, ...] = (
    "summarization",
    "translation",
    "qa",
    "rag",
    "math_reasoning",
)
"""Categories that keep their Spec-Bench metric (ROUGE-L, BLEU, F1/EM, F1/EM, accuracy)."""

FILE_MAX_NEW_TOKENS = DEFAULT_MAX_NEW_TOKENS["spec-bench"]
"""Per-turn budget of file items: the file has Spec-Bench's format, so Spec-Bench's budget."""


def looks_like_file(suite: str) -> bool:
    """Whether ``--suite`` names a file rather than a built-in suite.

    A ``.jsonl`` name, a path with a separator or an existing file all count, so a missing
    ``my.jsonl`` gets "does not exist" rather than "unknown suite".
    """
    return suite.endswith(".jsonl") or os.sep in suite or "/" in suite or Path(suite).is_file()


def scoring_for(category: str) -> str:
    """The quality group whose metric scores items of ``category``."""
    return category if category in TASK_SCORINGS else DEFAULT_SCORING


def _where(path: Path, line: int) -> str:
    return f"Line {line} of {path}"


def _check_question_id(value: Any, path: Path, line: int) -> str | int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise AlignspecError(
            f"{_where(path, line)}: field 'question_id' must be an integer or a string, "
            f"got {type(value).__name__}."
        )
    if isinstance(value, str) and not value.strip():
        raise AlignspecError(f"{_where(path, line)}: field 'question_id' is an empty string.")
    return value


def _check_category(value: Any, path: Path, line: int) -> str:
    if not isinstance(value, str) or not value.strip():
        got = "an empty string" if isinstance(value, str) else type(value).__name__
        raise AlignspecError(
            f"{_where(path, line)}: field 'category' must be a non-empty string, got {got}."
        )
    return value


def _check_turns(value: Any, path: Path, line: int) -> list[str]:
    if not isinstance(value, list) or not value:
        got = "an empty list" if isinstance(value, list) else type(value).__name__
        raise AlignspecError(
            f"{_where(path, line)}: field 'turns' must be a non-empty list of strings, got {got}."
        )
    for index, turn in enumerate(value):
        if not isinstance(turn, str):
            raise AlignspecError(
                f"{_where(path, line)}: field 'turns' item {index} must be a string, "
                f"got {type(turn).__name__}."
            )
        if not turn.strip():
            raise AlignspecError(f"{_where(path, line)}: field 'turns' item {index} is empty.")
    return list(value)


def _check_reference(value: Any, path: Path, line: int) -> list[str]:
    """A string, or a list of strings and lists of strings (RAG answer sets), flattened."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    bad = f"{_where(path, line)}: field 'reference' must be a string or a list of strings, got "
    if not isinstance(value, list):
        raise AlignspecError(bad + f"{type(value).__name__}.")
    flat: list[str] = []
    for element in value:
        if isinstance(element, str):
            flat.append(element)
        elif isinstance(element, list) and all(isinstance(e, str) for e in element):
            flat.extend(element)
        else:
            raise AlignspecError(bad + f"a list holding {type(element).__name__}.")
    return flat


def _item(row: Any, path: Path, line: int) -> BenchItem:
    """Validate one parsed line and turn it into a BenchItem."""
    if not isinstance(row, dict):
        raise AlignspecError(
            f"{_where(path, line)} is not a JSON object (got {type(row).__name__})."
        )
    for name in ("question_id", "category", "turns"):
        if name not in row:
            raise AlignspecError(f"{_where(path, line)}: required field '{name}' is missing.")
    category = _check_category(row["category"], path, line)
    return BenchItem(
        question_id=_check_question_id(row["question_id"], path, line),
        group=category,
        category=category,
        turns=_check_turns(row["turns"], path, line),
        references=_check_reference(row.get("reference"), path, line),
        meta={"file": str(path), "line": line},
        max_new_tokens=FILE_MAX_NEW_TOKENS,
        raw=False,
        scoring=scoring_for(category),
    )


def load_question_file(path: str | os.PathLike[str]) -> list[BenchItem]:
    """Read and validate every line of a Spec-Bench-format JSONL file, in file order.

    Blank lines are skipped (a trailing newline is not an error); anything else that is not a
    valid question raises :class:`AlignspecError` naming the line and the field.
    """
    file = Path(path).expanduser()
    if not file.exists():
        raise AlignspecError(f"Suite file {file} does not exist.")
    if not file.is_file():
        raise AlignspecError(f"Suite file {file} is not a file.")
    items: list[BenchItem] = []
    seen: dict[str | int, int] = {}
    try:
        with file.open(encoding="utf-8") as handle:
            for line, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise AlignspecError(
                        f"{_where(file, line)} is not valid JSON ({exc.msg} at column {exc.colno})."
                    ) from None
                item = _item(row, file, line)
                if item.question_id in seen:
                    raise AlignspecError(
                        f"{_where(file, line)}: field 'question_id' {item.question_id!r} "
                        f"repeats line {seen[item.question_id]}."
                    )
                seen[item.question_id] = line
                items.append(item)
    except UnicodeDecodeError as exc:
        raise AlignspecError(f"Suite file {file} is not UTF-8 text ({exc.reason}).") from None
    if not items:
        raise AlignspecError(
            f"Suite file {file} is empty; it needs one JSON question per line "
            "(question_id, category, turns)."
        )
    return items
