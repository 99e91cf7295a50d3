"""Peak memory on CPU: a fresh window after reset, and growth seen within it."""

from __future__ import annotations

import math

import torch

from alignspec.bench.memory import PeakMemory


def test_cpu_peak_is_positive_and_sees_an_allocation() -> None:
    memory = PeakMemory(torch.device("cpu"))
    assert memory.kind in ("cpu_peak_rss", "cpu_process_max_rss")
    memory.reset()
    before = memory.peak_mb()
    assert before > 0 and not math.isnan(before)
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert memory.peak_mb() >= before + 32
    del block
    if memory.kind == "cpu_peak_rss":  # resettable: the freed block leaves the window
        memory.reset()
        assert memory.peak_mb() < before + 32
