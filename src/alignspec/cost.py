"""The machine's measured verify cost: seconds for one target forward over ``n`` tree rows.

A verify over a few rows costs about one decoding step while the forward is bandwidth-bound
and grows once the matrix products become compute-bound, and where that happens depends on
the CPU, the thread count, the backend and the precision. So the curve is measured, not
assumed: on first use for a (machine, model, backend, precision, threads) combination, once,
then cached as JSON under ``~/.cache/alignspec/cost`` (``alignspec calibrate`` prints it and
``--force`` measures again). :mod:`alignspec.budget` reads it to size each round's tree.

The curve is measured twice, after a short and after a long cached context, and interpolated
(linearly, extrapolated past the long one) in the request's context length: attention grows
with the context, and with it what every extra row costs. Measured on a 2-core Xeon (int8,
2 threads): 8 rows cost 1.28x one row at 128 cached tokens and 1.54x at 2,000.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignspec.loading import cache_root
from alignspec.rows import RowLogits
from alignspec.targets.base import Target
from alignspec.tree import DraftTree

#: row counts measured; others are interpolated linearly (the curve is smooth and monotone)
GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
#: committed tokens in the cache while measuring: a typical short prompt, and a long one
PREFIX = 128
LONG_PREFIX = 1536
REPEATS = 5


def cache_dir() -> Path:
    return cache_root() / "cost"


def cpu_name() -> str:
    """The CPU model as ``lscpu`` names it (the curve belongs to one kind of CPU)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint(target: Target) -> dict[str, Any]:
    """What the cost depends on: machine, model shape, backend, precision, threads."""
    device = torch.device(target.device)
    model = getattr(target, "model", None)
    params = sum(p.numel() for p in model.parameters()) if model is not None else None
    return {
        "cpu": cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device),
        "device": device.type,
        "threads": torch.get_num_threads(),
        "backend": type(target).__name__,
        "quantize": getattr(target, "quantize", None),
        "kernels": getattr(target, "kernels", None),
        "weight_bytes": getattr(target, "weight_bytes", None),
        "params": params,
        "vocab": target.vocab_size,
        "torch": torch.__version__,
        "curves": "context-128-1536",  # what a cached file holds (older ones: remeasured)
    }


@dataclass
class CostModel:
    """Verify seconds per row count, measured at :data:`GRID` after ``prefix`` cached tokens
    (and after ``long_prefix``, where the model's context had room), interpolated between."""

    rows: list[int]
    seconds: list[float]
    key: dict[str, Any]
    prefix: int = PREFIX
    long_prefix: int | None = None
    long_seconds: list[float] | None = None

    def __post_init__(self) -> None:
        self._short: list[float] = []
        self._long: list[float] = []

    @staticmethod
    def _along(grid: list[int], seconds: list[float], n: int) -> list[float]:
        """One measured curve at rows 1..n: linear between grid points (np.interp's formula),
        the last slope continued past the grid."""
        out: list[float] = []
        j = 0
        for r in range(1, n + 1):
            if r <= grid[0]:
                out.append(seconds[0])
                continue
            if r > grid[-1]:
                slope = (seconds[-1] - seconds[-2]) / (grid[-1] - grid[-2])
                out.append(seconds[-1] + slope * (r - grid[-1]))
                continue
            while grid[j + 1] < r:
                j += 1
            if r == grid[j + 1]:
                out.append(seconds[j + 1])
            else:
                slope = (seconds[j + 1] - seconds[j]) / (grid[j + 1] - grid[j])
                out.append(slope * (r - grid[j]) + seconds[j])
        return out

    def curve(self, n: int, context: int | None = None) -> list[float]:
        """Predicted seconds for 1..n rows at once (the budget's per-round scan).

        Plain floats from curves kept per row count: the budget reads this every round, and
        numpy's per-call cost on a dozen values was most of a round's selection time."""
        if len(self._short) < n:
            size = max(n, 64)
            self._short = self._along(self.rows, self.seconds, size)
            if self.long_seconds is not None:
                self._long = self._along(self.rows, self.long_seconds, size)
        short = self._short[:n]
        if context is None or self.long_seconds is None or self.long_prefix is None:
            return short
        weight = max(0.0, (context - self.prefix) / (self.long_prefix - self.prefix))
        return [s + weight * (lo - s) for s, lo in zip(short, self._long, strict=False)]

    def verify(self, n: int, context: int | None = None) -> float:
        """Predicted seconds of one verify forward over ``n`` rows (root included) after
        ``context`` cached tokens (None: the short measurement's)."""
        return self.curve(n, context)[n - 1]

    def table(self) -> list[tuple[int, float, float | None]]:
        """(rows, seconds after ``prefix`` tokens, seconds after ``long_prefix`` or None)."""
        long = self.long_seconds or [None] * len(self.rows)
        return list(zip(self.rows, self.seconds, long, strict=True))

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "rows": self.rows,
            "seconds": self.seconds,
            "prefix": self.prefix,
            "long_prefix": self.long_prefix,
            "long_seconds": self.long_seconds,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CostModel:
        return cls(
            rows=list(data["rows"]),
            seconds=list(data["seconds"]),
            key=data["key"],
            prefix=int(data.get("prefix", PREFIX)),
            long_prefix=data.get("long_prefix"),
            long_seconds=data.get("long_seconds"),
        )


def cache_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"{digest}.json"


@torch.inference_mode()
def measure(target: Target, grid: tuple[int, ...] = GRID, repeats: int = REPEATS) -> CostModel:
    """Time ``target.verify`` over chains of every grid size (fastest of ``repeats``), after
    :data:`PREFIX` cached tokens and again after :data:`LONG_PREFIX` (where the model's
    context has room for at least twice the short one).

    The fastest, not the median: timing noise only ever adds time, and the running maximum
    below would carry one slow sample up to every larger size (an int8 curve measured with
    the median of 3 had 16 rows at 3.7x one row against 2.2x in ``forward_cost.py``). Each
    pass times every size once, so a machine whose speed drifts by tens of percent within a
    minute (as shared cloud CPUs do) slows every size alike; measured one size after another,
    a slow or fast spell lands on a few sizes and bends the curve the budget sizes trees by.

    Chains and trees of the same row count cost the same decoder forward (the mask differs,
    not the arithmetic); the LM head runs over the whole chain, which a tree's walk rarely
    needs, so the curve errs on the expensive side for trees. The target's cache is reset
    before and after, so no request state survives.
    """
    rng = np.random.default_rng(0)
    room = max(1, target.max_context - 2 * max(grid) - 8)
    prefix = min(PREFIX, room)
    seconds = _timed(target, rng, prefix, grid, repeats)
    long_prefix = min(LONG_PREFIX, room)
    long_seconds = None
    if long_prefix >= 2 * prefix:
        timed = _timed(target, rng, long_prefix, grid, repeats)
        long_seconds = np.maximum(timed, seconds).tolist()  # more context never costs less
    return CostModel(
        rows=list(grid),
        seconds=seconds,
        key=fingerprint(target),
        prefix=prefix,
        long_prefix=long_prefix if long_seconds is not None else None,
        long_seconds=long_seconds,
    )


def _timed(
    target: Target, rng: np.random.Generator, prefix: int, grid: tuple[int, ...], repeats: int
) -> list[float]:
    """:func:`measure`'s passes over the grid after ``prefix`` random cached tokens."""
    vocab = target.vocab_size
    target.reset()
    target.prefill(rng.integers(0, vocab, prefix).tolist())
    times: dict[int, list[float]] = {n: [] for n in grid}
    for rep in range(repeats + 1):  # the first pass warms caches and allocations up
        for n in grid:
            tree = DraftTree.chain(rng.integers(0, vocab, n - 1).tolist())
            start = time.perf_counter()
            out = target.verify(int(rng.integers(0, vocab)), tree)
            RowLogits.wrap(out.logits).row(0)  # a chain's LM head: the root and its chain
            elapsed = time.perf_counter() - start
            target.commit([0])
            if rep:
                times[n].append(elapsed)
    target.reset()
    # a curve that dips from timing noise would make a bigger tree look cheaper than a smaller
    return np.maximum.accumulate(np.asarray([min(times[n]) for n in grid])).tolist()


def load_or_measure(target: Target, *, force: bool = False) -> CostModel:
    """The cached curve for this target on this machine, measured now if there is none."""
    key = fingerprint(target)
    path = cache_path(key)
    if not force and path.is_file():
        try:
            model = CostModel.from_json(json.loads(path.read_text()))
            if model.key == key:
                return model
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is measured again and overwritten
    model = measure(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(model.to_json(), indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home still gets a budget, measured once per process
    return model
