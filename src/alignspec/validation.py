"""Checking the arguments of one generation request, where they come in.

:meth:`alignspec.api.LLM.stream` calls :func:`check_request` before it builds anything, so a
wrong type or value ends in one :class:`~alignspec.errors.AlignspecError` sentence instead of a
``TypeError`` in the tokenizer or, worse, a crash halfway through a generation. The pieces live
beside what they check (messages and prompt ids in :mod:`alignspec.prompting`, stop strings in
:mod:`alignspec.text`, sampling in :class:`~alignspec.sampling.SamplingParams`, method options
in their dataclasses via :mod:`alignspec.options`); this module only runs them in order and
hands back the normalised values.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignspec.errors import AlignspecError
from alignspec.options import is_int
from alignspec.prompting import TRUNCATE_MODES, check_messages, check_prompt_ids, check_text
from alignspec.text import check_stop


@dataclass(frozen=True)
class CheckedRequest:
    """The normalised arguments: stop strings as a tuple, prompt ids as ints (when given)."""

    max_new_tokens: int
    stop: tuple[str, ...]
    prompt_ids: list[int] | None


def check_max_new_tokens(value: object, name: str = "max_new_tokens") -> int:
    """A positive integer token budget (``2.5`` and ``True`` are refused, not coerced)."""
    if not is_int(value) or int(value) <= 0:  # type: ignore[call-overload]
        raise AlignspecError(f"{name} must be a positive integer, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def check_request(
    *,
    prompt: object,
    method: object,
    max_new_tokens: object,
    stop: object,
    raw: object,
    truncate: object,
    prompt_ids: object,
    on_tokens: object,
    vocab_size: int,
) -> CheckedRequest:
    """Validate every non-sampling argument of ``LLM.stream`` (see there for their meaning).

    Sampling settings and method options are checked by the dataclasses they build, which
    ``stream`` constructs right after this, still before any model work.
    """
    if not isinstance(method, str):
        raise AlignspecError(f"method must be a method name (a string), got {method!r}")
    budget = check_max_new_tokens(max_new_tokens)
    if not isinstance(raw, bool):
        raise AlignspecError(f"raw must be true or false, got {raw!r}")
    if not isinstance(truncate, str) or truncate not in TRUNCATE_MODES:
        raise AlignspecError(
            f"unknown truncation {truncate!r}; choose one of {', '.join(TRUNCATE_MODES)}"
        )
    if on_tokens is not None and not callable(on_tokens):
        raise AlignspecError(f"on_tokens must be a callable or None, got {on_tokens!r}")
    stops = check_stop(stop)  # type: ignore[arg-type]
    ids = None
    if prompt_ids is not None:
        ids = check_prompt_ids(prompt_ids, vocab_size)
    elif prompt is None:
        raise AlignspecError("give a prompt (text or chat messages)")
    elif isinstance(prompt, str):
        check_text(prompt, "the prompt")
    else:
        check_messages(prompt)
    return CheckedRequest(max_new_tokens=budget, stop=stops, prompt_ids=ids)
