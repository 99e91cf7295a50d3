"""Peak memory of one generation, on CUDA or CPU.

On CUDA the answer is ``torch.cuda.max_memory_allocated`` after a reset: the tensors the
generation needed, weights included. On CPU there is no allocator counter, so the process's
peak resident set size is used. Linux lets a process reset that peak (writing ``5`` to
``/proc/self/clear_refs`` resets ``VmHWM``), which makes it a per-generation number; where that
is not possible the lifetime maximum (``getrusage``) is reported instead, and ``kind`` says so,
because it can only grow over a run and says little about any one method.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class PeakMemory:
    """Reset before a generation, read after it; ``kind`` names what was measured."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            self.kind = "cuda_max_memory_allocated"
        elif _can_reset_rss():
            self.kind = "cpu_peak_rss"
        else:
            self.kind = "cpu_process_max_rss"

    def reset(self) -> None:
        """Start a new measurement window (a no-op where the peak cannot be reset)."""
        if self.kind == "cuda_max_memory_allocated":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.kind == "cpu_peak_rss":
            _reset_rss()

    def peak_mb(self) -> float:
        """Peak memory in MiB since the last :meth:`reset`."""
        if self.kind == "cuda_max_memory_allocated":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.kind == "cpu_peak_rss":
            return _read_hwm_kib() / 1024
        return _lifetime_max_rss_mb()


def _reset_rss() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _read_hwm_kib() -> float:
    match = re.search(r"VmHWM:\s+(\d+)\s+kB", _STATUS.read_text())
    return float(match.group(1)) if match else 0.0


def _can_reset_rss() -> bool:
    """True where ``VmHWM`` exists and can be reset (Linux, not forbidden by the sandbox)."""
    try:
        return _read_hwm_kib() > 0 and _reset_rss()
    except OSError:
        return False


def _lifetime_max_rss_mb() -> float:
    """``ru_maxrss`` is in KiB on Linux and in bytes on macOS."""
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
