"""One prompt, one method, three ways in (``alignspec generate``, ``llm.generate``, ``alignspec
bench``): the same tau and acceptance rate, because all three read ``alignspec.stats``.

Issue #14's acceptance check. Greedy decoding on one machine makes the three runs commit the
same tokens in the same rounds, so the figures must agree exactly (the CLI prints two
decimals, so it is compared at that precision).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import alignspec
from alignspec.cli import main
from alignspec.stats import fmt

pytestmark = pytest.mark.real

PROMPT = (
    "Repeat this list exactly, then add one more item: apples, pears, plums, apples, pears, "
    "plums, apples, pears, plums."
)
METHOD = "pld"
NEW_TOKENS = 32


def _stats_line(stderr: str) -> dict[str, str]:
    (line,) = [ln for ln in stderr.splitlines() if ln.startswith(f"[{METHOD}] ")]
    return dict(re.findall(r"(\w+)=(\S+)", line))


def test_cli_api_and_bench_report_the_same_tau_and_acceptance(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # 1. the command line
    argv = ["generate", PROMPT, "--method", METHOD, "--max-new-tokens", str(NEW_TOKENS)]
    assert main([*argv, "--device", "cpu"]) == 0
    cli = _stats_line(capsys.readouterr().err)

    # 2. the API
    llm = alignspec.load("default", device="cpu")
    out = llm.generate(PROMPT, method=METHOD, max_new_tokens=NEW_TOKENS)
    counters = out.stats.counters
    assert counters.num_drafts > 0  # the prompt must make pld draft, or nothing is compared

    # 3. the bench, over a one-question file
    suite = tmp_path / "one.jsonl"
    row = {"question_id": 1, "category": "lists", "turns": [PROMPT]}
    suite.write_text(json.dumps(row) + "\n", encoding="utf-8")
    run = tmp_path / "run"
    bench_argv = ["bench", "--suite", str(suite), "--methods", METHOD, "--device", "cpu"]
    bench_argv += ["--max-new-tokens", str(NEW_TOKENS), "--warmup", "0", "--output", str(run)]
    assert main([*bench_argv, "--no-progress"]) == 0
    bench = json.loads((run / "results.json").read_text())["summary"][METHOD]["lists"]

    assert cli["tau"] == fmt(counters.tau) and cli["acceptance"] == fmt(counters.acceptance_rate)
    assert int(cli["new_tokens"]) == out.stats.new_tokens
    assert bench["tau"] == counters.tau
    assert bench["acceptance_rate"] == counters.acceptance_rate
    assert bench["num_rounds"] == counters.num_rounds
    assert bench["num_accepted_tokens"] == counters.num_accepted_tokens
    assert bench["num_draft_tokens"] == counters.num_draft_tokens
