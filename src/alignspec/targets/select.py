"""Choosing the target backend for a loaded model: alignspec's native forward or transformers.

``auto`` takes the native forward whenever it implements the model's architecture (Llama,
Mistral, Qwen2) because it verifies a draft tree for about the cost of one decoding step;
anything else runs through transformers, which handles every causal LM. Asking for the native
backend explicitly, or for int8 (which only the native backend implements), turns an
unsupported model into a one-sentence :class:`AlignspecError` instead of a silent fallback.
"""

from __future__ import annotations

from typing import Any

from alignspec.errors import AlignspecError
from alignspec.targets.base import Target
from alignspec.targets.hf import HFTarget

BACKENDS = ("auto", "native", "hf")
QUANTIZATIONS = ("none", "int8")


def check_backend(backend: str, quantize: str | None) -> str | None:
    """Validate a backend/quantization pair; return the quantization (``None`` for none)."""
    if backend not in BACKENDS:
        raise AlignspecError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    if quantize == "none":
        quantize = None
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise AlignspecError(
            f"unknown quantization '{quantize}'; choose one of {', '.join(QUANTIZATIONS)}"
        )
    return quantize


def make_target(
    model: Any,
    backend: str = "auto",
    quantize: str | None = None,
    *,
    compile: bool = False,
) -> Target:
    """The :class:`Target` running ``model`` (a loaded transformers causal LM).

    ``backend``: ``"auto"`` (native when supported, else transformers), ``"native"`` or
    ``"hf"``. ``quantize``: ``None``/``"none"`` or ``"int8"`` (per-row W8A8, native only).
    ``compile``: wrap the native forward in ``torch.compile`` (opt-in; see
    :mod:`alignspec.targets.native.compiled`).
    """
    quantize = check_backend(backend, quantize)
    if backend == "hf":
        if quantize is not None or compile:
            what = "int8 quantization" if quantize is not None else "compile"
            raise AlignspecError(f"{what} needs the native backend; use backend native or auto")
        return HFTarget(model)

    from alignspec.targets.native import NativeTarget, UnsupportedModelError, inspect_model

    try:
        inspect_model(model)
    except UnsupportedModelError:
        if backend == "native" or quantize is not None or compile:
            raise
        return HFTarget(model)
    return NativeTarget.from_hf(model, quantize=quantize, compile=compile)
