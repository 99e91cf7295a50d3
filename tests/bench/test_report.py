"""Markdown table, JSON summary and PNG charts are written and readable."""

from __future__ import annotations

import json
import math
from pathlib import Path

from alignspec.bench.metrics import Choice, RunRecord, summarize_methods
from alignspec.bench.report import (
    markdown_table,
    plot_speedup,
    plot_tau_distribution,
    quality_columns,
    write_summary_json,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def record(qid: int, group: str, method: str, seconds: float, accept: list[int]) -> RunRecord:
    choice = Choice(
        turns=["x"],
        new_tokens=[sum(accept) or 10],
        wall_time=[seconds],
        accept_lengths=accept,
        proposed_lengths=[5] * len(accept) if method != "baseline" else [0] * len(accept),
        proposed_nodes=[5] * len(accept) if method != "baseline" else [0] * len(accept),
        token_ids=[[1, 2, 3]],
    )
    return RunRecord(qid, group, group, method, [choice])


def records_by_method() -> dict[str, list[RunRecord]]:
    groups = ["summarization", "qa", "translation"]
    out: dict[str, list[RunRecord]] = {"baseline": [], "pld": [], "aasd": []}
    for index, group in enumerate(groups):
        out["baseline"].append(record(index, group, "baseline", 2.0, [1] * 12))
        out["pld"].append(record(index, group, "pld", 1.0 + 0.2 * index, [3, 1, 4, 1, 2, 1]))
        out["aasd"].append(record(index, group, "aasd", 0.8 + 0.1 * index, [5, 2, 3, 1, 1]))
    return out


def summary() -> dict:
    result = summarize_methods(records_by_method(), baseline="baseline")
    result["aasd"]["summarization"]["quality"] = {"rougeL": 0.25, "n_scored": 1.0}
    result["pld"]["translation"]["quality"] = {"bleu": 31.234}
    return result


def test_markdown_table_rows_and_columns() -> None:
    table = markdown_table(summary())
    lines = table.strip().splitlines()
    header = "| method | group | n | tokens/s | speedup | ±95% | tau | MAL | acceptance |"
    assert lines[0].startswith(header)
    assert lines[0].endswith("| identical | prefill | ovh ms | rougeL | bleu |")
    assert len(lines) == 2 + 3 * 4  # header, rule, 3 methods x (3 groups + overall)
    pld_summ = next(line for line in lines if line.startswith("| pld | summarization |"))
    assert "| 2.00x |" in pld_summ and "| 2.00 |" in pld_summ and "| 100.0% |" in pld_summ
    assert "| 0.250 |" in table and "| 31.23 |" in table
    baseline = next(line for line in lines if line.startswith("| baseline | qa |"))
    assert "| 1.00x |" in baseline and "| - |" in baseline  # no acceptance for the baseline
    # one prompt per group: no interval; overall, pld's ratios 2, 2/1.2 and 2/1.4 give
    # t(0.975, 2 df) 4.303 x standard error 0.1657
    assert "| 2.00x | - |" in pld_summ
    pld_all = next(line for line in lines if line.startswith("| pld | overall |"))
    assert "| 1.70x | ±0.71 |" in pld_all
    assert quality_columns(summary()) == ["rougeL", "bleu"]


def test_summary_json_has_no_nan(tmp_path: Path) -> None:
    path = write_summary_json(summary(), tmp_path / "out" / "summary.json")
    loaded = json.loads(path.read_text())
    assert loaded["baseline"]["qa"]["acceptance_rate"] is None
    assert math.isclose(loaded["pld"]["qa"]["speedup"], 2 / 1.2)


def test_plots_are_written(tmp_path: Path) -> None:
    speed = plot_speedup(summary(), tmp_path / "plots" / "speedup.png", baseline="baseline")
    tau = plot_tau_distribution(records_by_method(), tmp_path / "plots" / "tau.png")
    for path in (speed, tau):
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000
