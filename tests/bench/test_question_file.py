"""``--suite FILE.jsonl``: a good file runs end to end, grouped by category and scored where
it has references; every kind of broken file ends in one sentence naming the line and field,
before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignspec.bench.datasets import load_suite
from alignspec.bench.question_file import load_question_file, looks_like_file
from alignspec.cli import main
from alignspec.errors import AlignspecError

GOOD_ROWS = [
    {"question_id": 1, "category": "stories", "turns": ["write a story", "summarize it"]},
    {
        "question_id": "s-2",
        "category": "summarization",
        "turns": ["summarize : the dog ran to the park ."],
        "reference": ["the dog ran to the park"],
    },
    {
        "question_id": 3,
        "category": "stories",
        "turns": ["write about the cat"],
        "reference": "the cat sat on the mat",
        "extra_field": "ignored",
    },
    {
        "question_id": 4,
        "category": "rag",
        "turns": ["who ran ?"],
        "reference": [["the dog", "a dog"], "dog"],
    },
]


def write_rows(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_good_file_loads_grouped_by_category(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "questions.jsonl", GOOD_ROWS)
    items = load_question_file(path)
    assert [i.question_id for i in items] == [1, "s-2", 3, 4]
    assert [i.group for i in items] == ["stories", "summarization", "stories", "rag"]
    assert [i.scoring for i in items] == ["text", "summarization", "text", "rag"]
    assert items[0].turns == ["write a story", "summarize it"] and items[0].references == []
    assert items[2].references == ["the cat sat on the mat"]
    assert items[3].references == ["the dog", "a dog", "dog"]
    assert not any(i.raw for i in items)
    # through load_suite, with the per-group limit
    limited = load_suite(str(path), limit_per_group=1)
    assert [i.question_id for i in limited] == [1, "s-2", 4]


def test_blank_lines_are_not_errors(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text("\n" + json.dumps(GOOD_ROWS[0]) + "\n\n   \n", encoding="utf-8")
    assert len(load_question_file(path)) == 1


def test_file_names_are_recognised() -> None:
    assert looks_like_file("my.jsonl") and looks_like_file("data/questions.txt")
    assert not looks_like_file("spec-bench") and not looks_like_file("mt-bench")


_DROP = object()


def _row(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {"question_id": 7, "category": "chat", "turns": ["hello"]}
    row.update(changes)
    return {k: v for k, v in row.items() if v is not _DROP}


OK = json.dumps(_row())


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", ["is empty"]),
        ("\n\n", ["is empty"]),
        (OK + "\n{not json\n", ["Line 2 of", "not valid JSON"]),
        (OK + "\n[1, 2]\n", ["Line 2 of", "not a JSON object"]),
        (json.dumps(_row(question_id=_DROP)), ["Line 1 of", "'question_id' is missing"]),
        (json.dumps(_row(category=_DROP)), ["Line 1 of", "'category' is missing"]),
        (OK + "\n" + json.dumps(_row(question_id=8, turns=_DROP)), ["Line 2", "'turns'"]),
        (json.dumps(_row(question_id=[1])), ["Line 1", "'question_id'", "got list"]),
        (json.dumps(_row(question_id=True)), ["Line 1", "'question_id'", "got bool"]),
        (json.dumps(_row(category=3)), ["Line 1", "'category'", "got int"]),
        (json.dumps(_row(category="")), ["Line 1", "'category'", "empty string"]),
        (json.dumps(_row(turns="hello")), ["Line 1", "'turns'", "got str"]),
        (json.dumps(_row(turns=[])), ["Line 1", "'turns'", "empty list"]),
        (json.dumps(_row(turns=["hi", 5])), ["Line 1", "'turns' item 1", "got int"]),
        (json.dumps(_row(turns=["hi", "  "])), ["Line 1", "'turns' item 1 is empty"]),
        (json.dumps(_row(reference=5)), ["Line 1", "'reference'", "got int"]),
        (json.dumps(_row(reference=[{"a": 1}])), ["Line 1", "'reference'", "dict"]),
        (OK + "\n\n" + OK + "\n", ["Line 3", "'question_id' 7 repeats line 1"]),
    ],
)
def test_broken_file_is_one_sentence(
    content: str,
    expected: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text(content, encoding="utf-8")
    out = tmp_path / "out"
    # --model points nowhere: the file must fail before any model is looked at
    code = main(
        ["bench", "--suite", str(path), "--model", "/nonexistent.gguf", "--output", str(out)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("alignspec: error:") and err.strip().count("\n") == 0, err
    assert str(path) in err
    for part in expected:
        assert part in err, (part, err)
    assert not out.exists()


def test_missing_and_undecodable_files(tmp_path: Path) -> None:
    with pytest.raises(AlignspecError, match="does not exist"):
        load_question_file(tmp_path / "nope.jsonl")
    with pytest.raises(AlignspecError, match="is not a file"):
        load_question_file(tmp_path)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"question_id": 1, "category": "caf\xe9", "turns": ["x"]}\n')
    with pytest.raises(AlignspecError, match="not UTF-8"):
        load_question_file(latin)


def test_missing_file_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "my.jsonl"
    assert main(["bench", "--suite", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"Suite file {missing} does not exist" in err and err.strip().count("\n") == 0


def test_bench_runs_a_question_file(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rows = [
        {"question_id": 1, "category": "stories", "turns": ["write a story about the cat"]},
        {
            "question_id": 2,
            "category": "stories",
            "turns": ["write about the dog"],
            "reference": ["the dog ran to the park"],
        },
        {
            "question_id": 3,
            "category": "summarization",
            "turns": ["summarize : the dog ran to the park ."],
            "reference": ["the dog ran to the park"],
        },
    ]
    path = write_rows(tmp_path / "mine.jsonl", rows)
    out = tmp_path / "run"
    code = main(
        [
            "bench",
            "--suite",
            str(path),
            "--methods",
            "pld",
            "--model",
            str(tiny_model_dir),
            "--device",
            "cpu",
            "--max-new-tokens",
            "5",
            "--warmup",
            "0",
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "| pld | stories |" in printed and "| pld | summarization |" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["suite"] == str(path)
    summary = results["summary"]
    assert list(summary["ar"]) == ["stories", "summarization", "overall"]
    # ROUGE-L for the free category (one of its two items has a reference), as for summaries
    assert summary["pld"]["stories"]["quality"]["n_scored"] == 1
    assert "rougeL" in summary["pld"]["stories"]["quality"]
    assert "rougeL" in summary["pld"]["summarization"]["quality"]
    records = [json.loads(line) for line in (out / "pld.jsonl").read_text().splitlines()]
    assert [r["group"] for r in records] == ["stories", "stories", "summarization"]
