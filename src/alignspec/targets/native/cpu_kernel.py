"""alignspec's own CPU kernels (``kernels/``): per-row W8A8 and few-row attention, built on use.

oneDNN's int8 GEMM costs about as much at one row as at sixteen, and for the small layers of
a 135M model a fixed cost per call dominates: on a Sapphire Rapids Xeon the int8 forward was
hardly faster than fp32. The kernel here quantises each activation row inside the call and
runs the integer products with AVX-512 VNNI (or exact AVX2, or scalar code), so the rows stay
independent (exact integer sums) and a call costs little more than reading its weights. From
11 rows up it runs on AMX tiles where the CPU has them: the same exact sums, so the same bits,
and a 16-row verify's linears cost about 1.5x one row's instead of 3x (Sapphire Rapids, 2 threads).

``attend_rows`` is the decode/verify attention: both sums over keys run in slot order over
the slots a row sees, so a tree row equals the same token decoded alone bitwise without the
fp64 sums of :func:`~alignspec.targets.native.attention.attend_exact`, and a one-row step
costs a fraction of the batched-matmul version's small ops. A bf16 cache is scored with bf16
queries (``attend_bf16_queries``): on AMX tiles, or with AVX512-BF16 pair products where
there is no AMX (every score the same chain in every layout, so the same bits still).
``rope_attend`` runs it for one layer straight from the fused qkv projection, rotating the
rows and writing their keys and values to the cache in the same call, and ``silu_mul`` is
the SwiGLU product: with torch's rotary, cache copies and silu, a one-row int8 step took
about a quarter longer.
``causal_attend`` is a prompt chunk's attention in attend_rows' arithmetic (AVX-512, head size
64): each prompt row comes out bitwise as if decoded alone, and a layer of 2,000 rows took
25.9 ms against 30.2 ms for torch's fused fp32 SDPA (attention is most of a 2,000-token
prefill); it reads fp32 or bf16 keys and values. ``causal_attend_bf16`` is the int8 model's
prompt attention where the CPU multiplies bf16 (its cache holds bf16 keys and values):
torch's bf16 SDPA's roundings on AMX tiles, about twice as fast as that SDPA on 64-wide
heads, or with AVX512-BF16 dot products where there is no AMX (``prompt_bf16.cpp``: a layer
of 2,048 rows 15-18 ms against 35 for ``causal_attend`` on a 2-core AMD EPYC).
``DecoderStack`` runs every layer's calls from C++ (one crossing per forward instead of seven
per layer: a one-row int8 forward 10% faster, the same bits).

It is compiled once per machine with ``-march=native`` by torch's extension builder into
``<cache>/kernels/`` (about a minute; needs a C++ compiler and ninja). Where the build fails
or ``ALIGNSPEC_CPU_KERNEL=0`` is set, int8 falls back to oneDNN (:mod:`.quant`), with a
warning for the failure. ``-ffp-contract=off`` keeps the output arithmetic
(``float(sum) * w_scale * x_scale + bias``) in the same roundings as the oneDNN path.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from alignspec.loading import cache_root

KERNELS = Path(__file__).with_name("kernels")
SOURCES = tuple(
    KERNELS / name
    for name in (
        "module.cpp",
        "w8a8.cpp",
        "attention.cpp",
        "rope.cpp",
        "prompt.cpp",
        "prompt_amx.cpp",
        "prompt_bf16.cpp",
        "norm.cpp",
        "silu.cpp",
        "topk.cpp",
        "layers.cpp",
        "retrieval.cpp",
        "aasd_tree.cpp",
    )
)
#: headers the sources include: part of the build key, not compiled on their own
HEADERS = tuple(
    KERNELS / name
    for name in (
        "vexp.h",
        "layers.h",
        "attend512.h",
        "head_rows.h",
        "split512.h",
        "rotary.h",
        "chunk.h",
        "amx.h",
        "bf16_softmax.h",
        "lanes_amx.h",
        "retrieval.h",
        "swiglu.h",
    )
)
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp")
ENV = "ALIGNSPEC_CPU_KERNEL"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def build_key() -> str:
    """What the compiled module depends on: the source, the flags, torch and the CPU."""
    h = hashlib.sha256(b"".join(source.read_bytes() for source in SOURCES + HEADERS))
    h.update(" ".join(FLAGS).encode())
    h.update(torch.__version__.encode())
    h.update(_cpu_flags().encode())
    return h.hexdigest()[:16]


def loaded() -> Any | None:
    """The module if :func:`load` has already run in this process (never starts a build):
    for the fp32 helpers that are faster with it but must not cost an fp32 user a compile."""
    return load() if load.cache_info().currsize else None


@functools.cache
def load() -> Any | None:
    """The compiled module (``pack``, ``linear``, ``attend_rows``, ``rope_attend``, ``rms_norm``,
    ``add_rms_norm_``, ``silu_mul``, ``gate_up_silu``, ``top_probs``, ``DecoderStack``,
    ``isa``), or ``None``."""
    if os.environ.get(ENV, "1") == "0" or platform.system() != "Linux":
        return None
    from torch.utils import cpp_extension

    key = build_key()
    folder = cache_root() / "kernels" / key
    folder.mkdir(parents=True, exist_ok=True)
    if not any(folder.glob("*.so")):
        print(
            "alignspec: building the int8 CPU kernel for this machine (once, about a minute)",
            file=sys.stderr,
            flush=True,
        )
    try:
        return cpp_extension.load(
            name=f"alignspec_cpu_{key}",
            sources=[str(source) for source in SOURCES],
            extra_cflags=list(FLAGS),
            extra_ldflags=["-fopenmp"],
            build_directory=str(folder),
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, an unsupported toolchain
        warnings.warn(
            f"alignspec's int8 CPU kernel could not be built ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}); "
            "int8 runs through oneDNN instead",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
