"""Loading the benchmark suites from the real shared data, limits and error messages."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from alignspec.bench import datasets
from alignspec.bench.datasets import (
    MT_BENCH_CATEGORIES,
    MULTI_NEWS_PROMPT,
    SPEC_BENCH_GROUPS,
    load_suite,
    resolve_data_dir,
)
from alignspec.errors import AlignspecError


@pytest.fixture(scope="module")
def data_dir() -> Path:
    """The real shared data; these tests are about reading it, so skip if it is absent."""
    try:
        found = resolve_data_dir()
    except AlignspecError as exc:
        pytest.skip(str(exc))
    if not (found / "spec_bench" / "question.jsonl").is_file():
        pytest.skip(f"no Spec-Bench data under {found}")
    return found


def test_spec_bench_full_has_six_groups_of_80(data_dir: Path) -> None:
    items = load_suite("spec-bench", data_dir=data_dir)
    assert len(items) == 480
    assert Counter(item.group for item in items) == {group: 80 for group in SPEC_BENCH_GROUPS}
    multi = [item for item in items if item.group == "multi-turn"]
    assert {item.category for item in multi} == set(MT_BENCH_CATEGORIES)
    assert all(len(item.turns) == 2 for item in multi)
    assert all(item.max_new_tokens == 1024 and not item.raw for item in items)


def test_spec_bench_references(data_dir: Path) -> None:
    items = {item.question_id: item for item in load_suite("spec-bench", data_dir=data_dir)}
    assert items[161].references == [
        "Pawnbrokers shine in Singapore as middle class feel the pinch"
    ]
    assert items[401].references[0].endswith("#### 1000")
    assert items[321].group == "qa" and items[321].references == []
    rag = items[481]
    assert rag.group == "rag"
    assert "a source of lumber" in rag.references
    assert all(isinstance(ref, str) for ref in rag.references)


def test_spec_bench_limit_round_robins_multi_turn(data_dir: Path) -> None:
    items = load_suite("spec-bench", data_dir=data_dir, limit_per_group=3)
    assert Counter(item.group for item in items) == {group: 3 for group in SPEC_BENCH_GROUPS}
    multi = [item for item in items if item.group == "multi-turn"]
    assert [item.category for item in multi] == ["writing", "roleplay", "reasoning"]
    translation = [item.question_id for item in items if item.group == "translation"]
    assert translation == [161, 162, 163]
    ids = [item.question_id for item in items]
    assert ids == sorted(ids)  # file order is kept


def test_spec_bench_limit_ten_covers_all_categories(data_dir: Path) -> None:
    items = load_suite("spec-bench", data_dir=data_dir, limit_per_group=10)
    multi = Counter(item.category for item in items if item.group == "multi-turn")
    assert set(multi) == set(MT_BENCH_CATEGORIES)
    assert sum(multi.values()) == 10


def test_multi_news_uses_longbench_template(data_dir: Path) -> None:
    items = load_suite("multi-news", data_dir=data_dir, limit_per_group=2)
    assert len(items) == 2
    item = items[0]
    prompt = item.turns[0]
    assert prompt.startswith("You are given several news passages. Write a one-page summary")
    assert prompt.endswith("Now, write a one-page summary of all the news.\n\nSummary:")
    assert "\n\nNews:\nPassage 1:" in prompt
    assert item.group == "multi-news" and item.max_new_tokens == 512 and not item.raw
    assert item.references and item.references[0].startswith("The Occupy LA encampment")
    assert isinstance(item.question_id, str) and item.meta["index"] == 0
    assert MULTI_NEWS_PROMPT.count("{context}") == 1


def test_humaneval_is_raw_code_completion() -> None:
    items = load_suite("humaneval", limit_per_group=2)
    assert [item.question_id for item in items] == ["HumanEval/0", "HumanEval/1"]
    item = items[0]
    assert item.raw and item.group == "humaneval" and item.max_new_tokens == 256
    assert item.turns[0].lstrip().startswith("from typing import List")
    assert set(item.meta) >= {"task_id", "test", "entry_point"}
    assert item.meta["entry_point"] == "has_close_elements"
    assert len(load_suite("humaneval")) == 164


def test_unknown_suite_lists_valid_names() -> None:
    with pytest.raises(AlignspecError, match=r"spec-bench, multi-news, humaneval"):
        load_suite("mt-bench")


def test_missing_data_dir_names_path_and_remedy(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(AlignspecError) as info:
        load_suite("spec-bench", data_dir=missing)
    message = str(info.value)
    assert str(missing / "spec_bench" / "question.jsonl") in message
    assert "ALIGNSPEC_DATA_DIR" in message and "--data-dir" in message


def test_env_var_points_at_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [
        {"question_id": 1, "category": "qa", "turns": ["Who?"]},
        {"question_id": 2, "category": "stem", "turns": ["a", "b"], "reference": ["x"]},
    ]
    (tmp_path / "spec_bench").mkdir()
    lines = "\n".join(json.dumps(row) for row in rows) + "\n\n"
    (tmp_path / "spec_bench" / "question.jsonl").write_text(lines)
    monkeypatch.setenv("ALIGNSPEC_DATA_DIR", str(tmp_path))
    items = load_suite("spec-bench")
    assert [(i.question_id, i.group) for i in items] == [(1, "qa"), (2, "multi-turn")]


def test_default_lookup_failure_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALIGNSPEC_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "_default_data_dir_candidates", lambda: [tmp_path / "a"])
    with pytest.raises(AlignspecError, match="ALIGNSPEC_DATA_DIR"):
        load_suite("multi-news")


def test_bad_limit_is_rejected() -> None:
    with pytest.raises(AlignspecError, match="limit_per_group"):
        load_suite("humaneval", limit_per_group=0)
