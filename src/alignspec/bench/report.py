"""Render benchmark summaries as a Markdown table, JSON and PNG charts.

``summary`` is the nested dict built by :func:`alignspec.bench.metrics.summarize_methods`:
``{method: {group: {"tokens_per_s": ..., "speedup": ..., "tau": ..., "acceptance_rate": ...,
"identical_share": ..., "quality": {"rougeL": ...}}}}``. Missing or NaN values show as "-".

Charts are drawn on a bare :class:`~matplotlib.figure.Figure` with the Agg canvas rather than
through ``pyplot``, so they work headless and never switch the caller's matplotlib backend.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alignspec.bench.metrics import RunRecord, counters_of

Summary = Mapping[str, Mapping[str, Mapping[str, Any]]]

_SPEED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("n_prompts", "n"),
    ("tokens_per_s", "tokens/s"),
    ("speedup", "speedup"),
    ("speedup_ci95", "±95%"),
    ("tau", "tau"),
    ("mean_acceptance_length", "MAL"),
    ("acceptance_rate", "acceptance"),
    ("rows_per_round", "rows/round"),
    ("identical_share", "identical"),
    ("prefill_time_share", "prefill"),
    ("overhead_ms_per_round", "ovh ms"),
)
_QUALITY_ORDER = ("rougeL", "f1", "em", "bleu", "accuracy", "pass@1", "edit_sim")
_HIDDEN_QUALITY = {"n_scored", "bleu_sentence_mean"}


# ----------------------------------------------------------------------------- formatting


def _missing(value: Any) -> bool:
    """None, NaN and non-numbers print as a dash."""
    if value is None or isinstance(value, bool):
        return True
    if not isinstance(value, int | float):
        return True
    return isinstance(value, float) and math.isnan(value)


def _format_speed(key: str, value: Any) -> str:
    """Units per column: tokens/s to 0.1, ratios with an x, shares as percentages."""
    if _missing(value):
        return "-"
    if key == "n_prompts":
        return str(int(value))
    if key == "tokens_per_s":
        return f"{value:.1f}"
    if key == "speedup":
        return f"{value:.2f}x"
    if key == "speedup_ci95":
        return f"±{value:.2f}"
    if key in ("tau", "mean_acceptance_length"):
        return f"{value:.2f}"
    if key == "rows_per_round":
        return f"{value:.1f}"
    if key == "overhead_ms_per_round":
        return f"{value:.2f}"
    return f"{100 * value:.1f}%"


def _format_quality(name: str, value: Any) -> str:
    """BLEU is on a 0-100 scale; the other quality metrics are fractions."""
    if _missing(value):
        return "-"
    return f"{value:.2f}" if name == "bleu" else f"{value:.3f}"


def quality_columns(summary: Summary) -> list[str]:
    """Quality metric names present anywhere in the summary, in a stable, readable order."""
    names: set[str] = set()
    for groups in summary.values():
        for stats in groups.values():
            names.update(k for k in stats.get("quality", {}) if k not in _HIDDEN_QUALITY)
    known = [n for n in _QUALITY_ORDER if n in names]
    return known + sorted(names - set(known))


def markdown_table(summary: Summary) -> str:
    """One row per (method, group): speed, speedup, tau, acceptance, identity, quality.

    ``identical`` is the share of prompts whose output equals the baseline's token for token,
    the quickest check that a lossless method is in fact lossless.
    """
    quality = quality_columns(summary)
    header = ["method", "group", *(title for _, title in _SPEED_COLUMNS), *quality]
    lines = [_row(header), _row(["---"] * 2 + ["---:"] * (len(header) - 2))]
    for method, groups in summary.items():
        for group, stats in groups.items():
            cells = [method, group]
            cells += [_format_speed(key, stats.get(key)) for key, _ in _SPEED_COLUMNS]
            scores = stats.get("quality", {})
            cells += [_format_quality(name, scores.get(name)) for name in quality]
            lines.append(_row(cells))
    return "\n".join(lines) + "\n"


def _row(cells: Sequence[str]) -> str:
    """A Markdown table row; pipes inside names are escaped."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _json_safe(value: Any) -> Any:
    """Replace NaN/inf by None recursively; JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_summary_json(summary: Summary, path: str | os.PathLike[str]) -> Path:
    """Save the summary as strict JSON (NaN written as null) and return the path."""
    target = _prepare(path)
    target.write_text(json.dumps(_json_safe(summary), indent=2) + "\n", encoding="utf-8")
    return target


# ----------------------------------------------------------------------------- charts


def _prepare(path: str | os.PathLike[str]) -> Path:
    """Create the parent folder of an output file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _new_figure(width: float, height: float) -> Any:
    """A pyplot-free figure bound to the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _speedup_groups(summary: Summary, methods: Sequence[str]) -> list[str]:
    """Groups that have a speedup for some plotted method, in first-seen order."""
    groups: list[str] = []
    for method in methods:
        for group, stats in summary[method].items():
            if not _missing(stats.get("speedup")) and group not in groups:
                groups.append(group)
    return groups


def plot_speedup(
    summary: Summary, path: str | os.PathLike[str], baseline: str | None = None
) -> Path:
    """Grouped bars of speedup per group, one bar per method, with a line at 1.0x.

    The ``baseline`` method (speedup 1.0 by construction) is left out when named. Groups
    without a speedup are skipped; bars are labelled with their value and carry their 95%
    interval (``speedup_ci95``) as an error bar where there is one.
    """
    methods = [m for m in summary if m != baseline]
    groups = _speedup_groups(summary, methods)
    figure = _new_figure(max(6.0, 1.1 * len(groups) * max(1, len(methods)) ** 0.5 + 2), 4.2)
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(methods))
    tallest = 1.0
    for offset, method in enumerate(methods):
        xs, ys, errs = _bar_values(summary[method], groups, offset, width)
        bars = axes.bar(xs, ys, width=width, label=method, yerr=errs, capsize=2)
        axes.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
        tallest = max([tallest, *(y + e for y, e in zip(ys, errs, strict=True))])
    axes.axhline(1.0, color="black", linestyle="--", linewidth=1, label="baseline (1.0x)")
    axes.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    axes.set_xlabel("task group")
    axes.set_ylabel("speedup over baseline (x)")
    axes.set_title("Speedup per task group")
    axes.set_ylim(0, 1.15 * tallest)  # headroom for the value labels
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    target = _prepare(path)
    figure.savefig(target)
    return target


def _bar_values(
    groups_stats: Mapping[str, Mapping[str, Any]],
    groups: Sequence[str],
    offset: int,
    width: float,
) -> tuple[list[float], list[float], list[float]]:
    """x positions, heights and error-bar half-widths (0 where none) of one method's bars
    (missing groups are left out)."""
    xs: list[float] = []
    ys: list[float] = []
    errs: list[float] = []
    for index, group in enumerate(groups):
        stats = groups_stats.get(group, {})
        value = stats.get("speedup")
        if _missing(value):
            continue
        margin = stats.get("speedup_ci95")
        xs.append(index - 0.4 + width * (offset + 0.5))
        ys.append(float(value))
        errs.append(0.0 if _missing(margin) else float(margin))
    return xs, ys, errs


def plot_tau_distribution(
    records_by_method: Mapping[str, Sequence[RunRecord]], path: str | os.PathLike[str]
) -> Path:
    """Distribution of tokens committed per round for each method, as grouped bars.

    Accepted lengths are small integers, so a share-of-rounds bar per length reads better
    than a box plot; each legend entry carries the method's mean (tau).
    """
    lengths = {
        method: [n for r in records for n in r.choice.accept_lengths]
        for method, records in records_by_method.items()
    }
    lengths = {method: values for method, values in lengths.items() if values}
    taus = {method: counters_of(records_by_method[method]).tau for method in lengths}
    top = max((max(values) for values in lengths.values()), default=1)
    figure = _new_figure(max(7.5, 0.45 * top + 3.5), 4.2)
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(lengths))
    for offset, (method, values) in enumerate(lengths.items()):
        counts = [values.count(k) / len(values) for k in range(1, top + 1)]
        xs = [k - 0.4 + width * (offset + 0.5) for k in range(1, top + 1)]
        axes.bar(xs, counts, width=width, label=f"{method} (tau={taus[method]:.2f})")
    axes.set_xticks(range(1, top + 1))
    axes.set_xlabel("tokens committed per round (accepted draft + bonus)")
    axes.set_ylabel("share of rounds")
    axes.set_title("Accepted length per round")
    if lengths:
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    target = _prepare(path)
    figure.savefig(target)
    return target
