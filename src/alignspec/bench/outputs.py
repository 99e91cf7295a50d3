"""From a finished run's records to ``results.json``, ``results.md`` and the two charts.

The summary is :func:`alignspec.bench.metrics.summarize_methods`, plus what only the runner
knows: whether a method is lossless, quality per group, and which numbers a transformers peer
cannot provide (its per-round accepted lengths and draft/verify split are NaN, shown as "-",
rather than zeros that would read as measurements).
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from alignspec.bench.backends import Backend
from alignspec.bench.datasets import BenchItem
from alignspec.bench.llamacpp import environment as llamacpp_environment
from alignspec.bench.metrics import RunRecord, first_divergence, matched_pairs, summarize_methods
from alignspec.bench.report import (
    markdown_table,
    plot_speedup,
    plot_tau_distribution,
    write_summary_json,
)
from alignspec.cost import cpu_name

Summary = dict[str, dict[str, dict[str, Any]]]

NOTES = (
    "tokens/s: mean over prompts of new tokens / wall time (prefill included). "
    "speedup: mean over prompts of the method's tokens/s over the baseline's on the same "
    "prompt in the same run. ±95%: half-width of its 95% confidence interval (Student's t over "
    "the per-prompt ratios), so a group within that distance of 1.00x is level with the "
    "baseline. tau: mean tokens committed per round, bonus token included "
    "(1.00 for plain decoding); '-' for the transformers peers (hf-*), whose rounds are not "
    "observable from outside `generate`. MAL: vLLM's mean acceptance length, 1 + accepted / "
    "rounds that drafted. acceptance: accepted draft tokens / proposed draft nodes (every node "
    "of a tree). rows/round: rows per verify forward (root + draft nodes). prefill: share of "
    "wall time in the prefill. ovh ms: engine time per round that is neither drafting nor "
    "the target forward. "
    "identical: share of prompts whose token ids equal the baseline's (1.0 expected for "
    "lossless methods; a flip at a near-tie of the top-2 logits is fp rounding). "
    "llamacpp-*: llama.cpp on the same GGUF with its quantised weights and kernels, so its "
    "tokens may part from the baseline's after a near-tie; like hf-*, its rounds are not "
    "observable ('-'), and results.json gives tokens per target forward (tau_forward_passes)."
)


def write_outputs(
    out_dir: Path,
    llm: Any,
    items: Sequence[BenchItem],
    backends: Sequence[Backend],
    records: Mapping[str, Sequence[RunRecord]],
    config: Mapping[str, Any],
    group_order: Sequence[str] | None = None,
) -> Summary:
    """Summarise, then write results.json, results.md, speedup.png and tau.png; return it."""
    baseline = str(config["baseline"])
    summary = summarize_methods(records, baseline=baseline, group_order=group_order)
    by_name = {b.name: b for b in backends}
    add_runner_fields(summary, by_name, records, items)
    env = environment(llm)
    results = {
        "config": dict(config),
        "environment": env,
        "summary": summary,
        "divergences": divergences(records, baseline, by_name),
        "notes": NOTES,
    }
    write_summary_json(results, out_dir / "results.json")
    table = markdown_table(summary)
    (out_dir / "results.md").write_text(markdown_document(config, env, table), encoding="utf-8")
    plot_speedup(summary, out_dir / "speedup.png", baseline=baseline)
    plot_tau_distribution(records, out_dir / "tau.png")
    return summary


def add_runner_fields(
    summary: Summary,
    backends: Mapping[str, Backend],
    records: Mapping[str, Sequence[RunRecord]],
    items: Sequence[BenchItem],
) -> None:
    """Add ``lossless``, ``peer``, ``quality`` and the peers' forward-pass tau in place."""
    for method, groups in summary.items():
        backend = backends[method]
        for group, stats in groups.items():
            members = [r for r in records[method] if group == "overall" or r.group == group]
            stats["lossless"] = backend.lossless
            stats["peer"] = backend.peer
            if not backend.has_round_stats:
                stats["draft_time_share"] = math.nan
                stats["verify_time_share"] = math.nan
                stats["tau_forward_passes"] = tau_from_forward_passes(members)
            if group != "overall":
                stats["quality"] = group_quality(group, members, items)


def tau_from_forward_passes(records: Sequence[RunRecord]) -> float:
    """Tokens per target forward after the prefill: a peer's mean accepted length.

    The prefill forward yields the first token; each later forward is one round. This is a
    mean only: it cannot give the per-round distribution that ``tau`` in the table needs.
    """
    tokens = rounds = 0
    for record in records:
        passes = record.choice.extra.get("forward_passes") or []
        for new, calls in zip(record.choice.new_tokens, passes, strict=False):
            if calls and calls > 1:
                tokens += new - 1
                rounds += calls - 1
    return tokens / rounds if rounds else math.nan


def group_quality(
    group: str, records: Sequence[RunRecord], items: Sequence[BenchItem]
) -> dict[str, float]:
    """The quality module's group aggregate over the per-record scores the runner stored."""
    from alignspec.bench.quality import QUALITY_GROUPS, aggregate_quality

    if not records:
        return {}
    by_id = {item.question_id: item for item in items}
    first = by_id[records[0].question_id]
    scoring = first.scoring or group  # one group, one category, one scoring
    if scoring not in QUALITY_GROUPS:
        return {}
    return aggregate_quality(
        scoring,
        [r.extra.get("quality", {}) for r in records],
        [r.choice.turns for r in records],
        [by_id[r.question_id] for r in records],
    )


def divergences(
    records: Mapping[str, Sequence[RunRecord]], baseline: str, backends: Mapping[str, Backend]
) -> dict[str, list[dict[str, Any]]]:
    """Where each lossless method's tokens first differ from the baseline's, per turn."""
    found: dict[str, list[dict[str, Any]]] = {}
    for method, rows in records.items():
        if method == baseline or not backends[method].lossless:
            continue
        found[method] = []
        for mine, base in matched_pairs(rows, records[baseline]):
            pairs = zip(mine.choice.token_ids, base.choice.token_ids, strict=False)
            for turn, (a, b) in enumerate(pairs):
                index = first_divergence(a, b)
                if index is not None:
                    found[method].append(
                        {
                            "question_id": mine.question_id,
                            "group": mine.group,
                            "turn": turn,
                            "index": index,
                            "method_tokens": len(a),
                            "baseline_tokens": len(b),
                        }
                    )
                    break  # later turns have different prompts anyway
    return found


def environment(llm: Any) -> dict[str, Any]:
    """What the numbers were measured on, for the report and for comparing runs."""
    import transformers

    param = next(llm.model.parameters())
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(param.device),
        "dtype": str(param.dtype).removeprefix("torch."),
        "quantize": getattr(llm.target, "quantize", None) or "none",
        "cpu": cpu_name(),
        "target_backend": type(llm.target).__name__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": _total_memory_gib(),
    }
    if param.device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(param.device)
    env.update(llamacpp_environment())
    return env


def _total_memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def describe_sampling(sampling: Mapping[str, Any] | None) -> str:
    """``greedy`` or the sampling settings, as the results header names them."""
    if not sampling or not sampling.get("temperature"):
        penalty = (sampling or {}).get("repetition_penalty", 1.0)
        return "greedy" if penalty == 1.0 else f"greedy, repetition_penalty {penalty}"
    parts = [f"temperature {sampling['temperature']}"]
    if sampling.get("top_k"):
        parts.append(f"top_k {sampling['top_k']}")
    if sampling.get("top_p", 1.0) != 1.0:
        parts.append(f"top_p {sampling['top_p']}")
    if sampling.get("repetition_penalty", 1.0) != 1.0:
        parts.append(f"repetition_penalty {sampling['repetition_penalty']}")
    return (
        "sampling, " + ", ".join(parts) + " (torch seeded before every run; 'identical' then "
        "only counts draws that happen to coincide: lossless sampling keeps the distribution, "
        "not the draws)"
    )


def markdown_document(config: Mapping[str, Any], env: Mapping[str, Any], table: str) -> str:
    """results.md: what was run on what, the table, and how to read it."""
    budget = config.get("max_new_tokens") or "per item (suite default)"
    limit = config.get("limit_per_group") or "all"
    device = (
        env.get("gpu") or f"{env['device']} ({env.get('cpu') or 'CPU'}, {env['cpu_count']} cores)"
    )
    quantize = env.get("quantize", "none")
    weights = env["dtype"] if quantize == "none" else f"{env['dtype']}, quantize {quantize}"
    lines = [
        f"# alignspec bench: {config['suite']}",
        "",
        f"- model: {config['model']}, {weights} on {device}; torch {env['torch']}, "
        f"transformers {env['transformers']}",
        f"- prompts: {config['n_prompts']} ({limit} per group); max_new_tokens: {budget}; "
        f"warmup {config['warmup']}; repeats {config['repeats']} (median kept); "
        f"seed {config['seed']}",
        f"- decoding: {describe_sampling(config.get('sampling'))}",
        f"- methods: {', '.join(config['methods'])}; baseline: {config['baseline']}; "
        f"order: {config['order']}",
        f"- run: {config['started']} to {config['finished']}",
        "",
        table.rstrip("\n"),
        "",
        NOTES,
        "",
    ]
    return "\n".join(lines)
