"""The machine's measured verify cost: seconds for one target forward over ``n`` tree rows.

A verify over a few rows costs about one decoding step while the forward is bandwidth-bound
and grows once the matrix products become compute-bound, and where that happens depends on
the CPU, the thread count, the backend and the precision. So the curve is measured, not
assumed: on first use for a (machine, model, backend, precision, threads) combination, once,
then cached as JSON under ``~/.cache/alignspec/cost`` (``alignspec calibrate`` prints it and
``--force`` measures again). :mod:`alignspec.budget` reads it to size each round's tree.
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
#: committed tokens in the cache while measuring (a typical short prompt)
PREFIX = 128
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
    }


@dataclass
class CostModel:
    """Verify seconds per row count, measured at :data:`GRID` and interpolated between."""

    rows: list[int]
    seconds: list[float]
    key: dict[str, Any]

    def verify(self, n: int) -> float:
        """Predicted seconds of one verify forward over ``n`` rows (root included)."""
        if n <= self.rows[-1]:
            return float(np.interp(n, self.rows, self.seconds))
        slope = (self.seconds[-1] - self.seconds[-2]) / (self.rows[-1] - self.rows[-2])
        return self.seconds[-1] + slope * (n - self.rows[-1])

    def curve(self, n: int) -> np.ndarray:
        """Predicted seconds for 1..n rows at once (the budget's per-round scan)."""
        rows = np.arange(1, n + 1)
        out = np.interp(rows, self.rows, self.seconds)
        beyond = rows > self.rows[-1]
        if beyond.any():
            out[beyond] = [self.verify(int(r)) for r in rows[beyond]]
        return out

    def table(self) -> list[tuple[int, float]]:
        return list(zip(self.rows, self.seconds, strict=True))

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "rows": self.rows, "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CostModel:
        return cls(rows=list(data["rows"]), seconds=list(data["seconds"]), key=data["key"])


def cache_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"{digest}.json"


@torch.inference_mode()
def measure(target: Target, grid: tuple[int, ...] = GRID, repeats: int = REPEATS) -> CostModel:
    """Time ``target.verify`` over chains of every grid size (fastest of ``repeats``).

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
    vocab = target.vocab_size
    prefix = min(PREFIX, max(1, target.max_context - 2 * max(grid) - 8))
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
    seconds = [min(times[n]) for n in grid]
    target.reset()
    # a curve that dips from timing noise would make a bigger tree look cheaper than a smaller
    seconds = np.maximum.accumulate(np.asarray(seconds)).tolist()
    return CostModel(rows=list(grid), seconds=seconds, key=fingerprint(target))


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
