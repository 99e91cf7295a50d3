"""Checking method options against the dataclasses that declare them.

Each method's options are a dataclass (``PromptLookupConfig``, ``AASDConfig``, ...) whose fields
carry a type annotation and metadata: ``help`` for the CLI, and optionally ``min``/``max``
(inclusive bounds) and ``choices``. :func:`check_fields` reads exactly that, so the API, the
CLI (whose flags are built from the same fields) and the server refuse the same values with the
same sentence, before any model work starts. The dataclasses call it first thing in
``__post_init__``; their own cross-field rules (``min_ngram <= max_ngram``) then run on values
known to have the right type.

``bool`` is refused where an ``int`` is wanted (``True`` is not a draft length) and a float that
happens to be whole is refused too: ``draft_len=2.0`` is a caller bug, not a request.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

from alignspec.errors import AlignspecError

#: annotation (as written, ``from __future__ import annotations`` keeps it a string) -> kind
_KINDS = {"int": int, "float": float, "bool": bool, "str": str}


def field_kind(f: dataclasses.Field) -> type | None:
    """The scalar type a field holds (``int``, ``float``, ``bool``, ``str``) or ``None``."""
    if isinstance(f.type, type):
        return f.type if f.type in _KINDS.values() else None
    return _KINDS.get(str(f.type).strip())


def is_int(value: object) -> bool:
    """An integer that is not a ``bool`` (numpy and torch integers included)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A real number that is not a ``bool`` and not NaN."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value


def describe(kind: type, meta: dict[str, Any]) -> str:
    """What a field accepts, in words: ``an integer >= 1``, ``one of exact, conditional``."""
    if "choices" in meta:
        return "one of " + ", ".join(str(c) for c in meta["choices"])
    words = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}
    text = words[kind]
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        text += f" in [{lo}, {hi}]"
    elif lo is not None:
        text += f" >= {lo}"
    elif hi is not None:
        text += f" <= {hi}"
    return text


def check_value(owner: str, name: str, kind: type, meta: dict[str, Any], value: Any) -> Any:
    """``value`` converted to ``kind`` (e.g. numpy int -> int), or one sentence why not."""
    ok: bool
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = is_int(value)
        value = int(value) if ok else value
    elif kind is float:
        ok = is_real(value) and math.isfinite(value)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if ok and "choices" in meta:
        ok = value in meta["choices"]
    if ok and meta.get("min") is not None:
        ok = value >= meta["min"]
    if ok and meta.get("max") is not None:
        ok = value <= meta["max"]
    if not ok:
        raise AlignspecError(f"{owner} option {name} must be {describe(kind, meta)}, got {value!r}")
    return value


def check_fields(obj: Any, owner: str | None = None) -> None:
    """Validate (and normalise in place) every scalar field of the dataclass instance ``obj``.

    ``owner`` names whose options these are in the message (default: the class name).
    """
    who = owner or type(obj).__name__
    for f in dataclasses.fields(obj):
        kind = field_kind(f)
        if kind is None:
            continue
        value = check_value(who, f.name, kind, dict(f.metadata), getattr(obj, f.name))
        object.__setattr__(obj, f.name, value)  # also works on frozen dataclasses
