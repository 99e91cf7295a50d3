"""Quality metrics on known cases, including running tiny HumanEval-style programs."""

from __future__ import annotations

import pytest

from alignspec.bench import quality
from alignspec.bench.datasets import BenchItem, load_suite
from alignspec.bench.quality import (
    aggregate_quality,
    corpus_bleu,
    edit_similarity,
    exact_match,
    extract_gsm8k_reference,
    extract_last_number,
    first_code_line,
    gsm8k_accuracy,
    humaneval_pass,
    rouge_l,
    run_program_in_subprocess,
    score_item,
    sentence_bleu,
    token_f1,
    truncate_humaneval_completion,
)
from alignspec.errors import AlignspecError

ADD_PROBLEM = {
    "task_id": "Toy/0",
    "prompt": 'def add(a, b):\n    """Return a + b."""\n',
    "test": (
        "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
    ),
    "entry_point": "add",
}


def item(group: str, references: list[str], **meta: str) -> BenchItem:
    return BenchItem("q", group, group, ["prompt"], references, dict(meta))


def test_rouge_l_known_pair() -> None:
    # LCS of "the cat sat on the mat" / "the cat is on the mat" is 5 of 6 tokens each way
    assert rouge_l("the cat is on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    assert rouge_l("the cat is on the mat", ["zzz", "the cat sat on the mat"]) == pytest.approx(
        5 / 6
    )
    assert rouge_l("", "the cat") == 0.0


def test_token_f1_and_exact_match() -> None:
    # normalised: "cat sat" vs "cat sat on mat" -> P = 1, R = 0.5, F1 = 2/3
    assert token_f1("The cat sat.", "a cat sat on the mat") == pytest.approx(2 / 3)
    assert token_f1("The cat sat.", ["dog", "cat sat"]) == pytest.approx(1.0)
    assert token_f1("nothing", "cat") == 0.0
    assert exact_match("The Eiffel Tower!", ["Paris", "eiffel tower"]) == 1.0
    assert exact_match("Eiffel", "eiffel tower") == 0.0


def test_bleu_sentence_and_corpus() -> None:
    text = "the quick brown fox jumps over the lazy dog"
    assert sentence_bleu(text, [text]) == pytest.approx(100.0)
    assert sentence_bleu("completely different words here", text) < 20
    both = corpus_bleu([text, "hello there my friend"], [[text], ["x y", "hello there my friend"]])
    assert both == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("reference", "expected"),
    [("so 600+400=1000\n#### 1000", "1000"), ("#### 1,000", "1000"), ("no marker", None)],
)
def test_gsm8k_reference(reference: str, expected: str | None) -> None:
    assert extract_gsm8k_reference(reference) == expected


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("The total is $1,000.", "1000"),
        ("It costs 12 dollars, so 3 items cost 36.", "36"),
        ("He owes -5.5 now", "-5.5"),
        ("no digits", None),
    ],
)
def test_last_number(prediction: str, expected: str | None) -> None:
    assert extract_last_number(prediction) == expected


def test_gsm8k_accuracy() -> None:
    assert gsm8k_accuracy("So it cost $1,000.", "#### 1,000") == 1.0
    assert gsm8k_accuracy("The answer is 1000.00", "#### 1000") == 1.0
    assert gsm8k_accuracy("The answer is 999", "#### 1000") == 0.0
    assert gsm8k_accuracy("I do not know", "#### 1000") == 0.0


def test_edit_similarity_uses_first_code_line() -> None:
    prediction = "\n# add one\n```python\nreturn x + 1\nprint(x)\n"
    assert first_code_line(prediction) == "return x + 1"
    assert edit_similarity(prediction, "return x + 1") == pytest.approx(1.0)
    assert edit_similarity("abc", "abd") == pytest.approx(2 / 3)
    assert edit_similarity("// only a comment", "x") == 0.0


def test_humaneval_pass_and_fail() -> None:
    assert humaneval_pass("    return a + b\n", ADD_PROBLEM) == 1.0
    assert humaneval_pass("    return a - b\n", ADD_PROBLEM) == 0.0


def test_humaneval_subprocess_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quality, "humaneval_exec_enabled", lambda: False)
    assert humaneval_pass("    return a + b\n", ADD_PROBLEM) == 1.0
    assert humaneval_pass("    return a * b\n", ADD_PROBLEM) == 0.0
    assert run_program_in_subprocess("while True:\n    pass\n", timeout=0.5) is False
    assert run_program_in_subprocess("raise SystemExit(0)\n") is True


def test_humaneval_exec_check_is_boolean() -> None:
    assert isinstance(quality.humaneval_exec_enabled(), bool)


def test_humaneval_completion_truncation() -> None:
    completion = "    return a + b\n\n\ndef unused():\n    pass\n\nif __name__ == '__main__':\n"
    assert truncate_humaneval_completion(completion) == "    return a + b\n\n"
    # trailing junk that would fail is cut before testing
    assert humaneval_pass("    return a + b\nprint(undefined_name)\n", ADD_PROBLEM) == 1.0


def test_real_humaneval_canonical_solution_passes() -> None:
    (first,) = load_suite("humaneval", limit_per_group=1)
    assert score_item("humaneval", first.references[0], first) == {"pass@1": 1.0}


def test_score_item_per_group() -> None:
    assert score_item(
        "summarization", "the cat is on the mat", item("s", ["the cat sat on the mat"])
    ) == {"rougeL": pytest.approx(5 / 6)}
    assert score_item("qa", "anything", item("qa", [])) == {}
    assert score_item("qa", "Lana Parrilla", item("qa", ["Lana Parrilla"])) == {
        "f1": 1.0,
        "em": 1.0,
    }
    rag = score_item(
        "rag", "a source of lumber", item("rag", ["recreational areas", "a source of lumber"])
    )
    assert rag["f1"] == pytest.approx(1.0)
    assert score_item("translation", "a b c d e", item("t", ["a b c d e"]))[
        "bleu"
    ] == pytest.approx(100)
    assert score_item("math_reasoning", ["So: 1,000."], item("m", ["x\n#### 1000"])) == {
        "accuracy": 1.0
    }
    assert score_item("multi-turn", ["a", "b"], item("multi-turn", ["ref"])) == {}
    with pytest.raises(AlignspecError, match="Unknown benchmark group"):
        score_item("poetry", "x", item("poetry", []))


def test_aggregate_quality_uses_corpus_bleu() -> None:
    items = [item("translation", ["a b c d e f"]), item("translation", ["g h i j k l"])]
    predictions = ["a b c d e f", "g h i x y z"]
    scores = [score_item("translation", p, it) for p, it in zip(predictions, items, strict=True)]
    result = aggregate_quality("translation", scores, predictions, items)
    assert result["bleu"] == pytest.approx(corpus_bleu(predictions, [i.references for i in items]))
    assert result["bleu_sentence_mean"] == pytest.approx(sum(s["bleu"] for s in scores) / 2)
    assert result["n_scored"] == 2
    summ = aggregate_quality("qa", [{"f1": 1.0, "em": 1.0}, {}], ["a", "b"], items)
    assert summ == {"f1": 1.0, "em": 1.0, "n_scored": 1.0}
