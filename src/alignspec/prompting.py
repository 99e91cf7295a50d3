"""Turning user input into prompt tokens: chat template, raw mode, context-length checks.

Instruct models answer well only inside their chat template, so a string prompt is wrapped as
one user message by default; ``raw`` skips the template (code completion, base models). A
prompt that does not fit the context with room for ``max_new_tokens`` is refused, as vLLM does,
unless the caller asks for LongBench-style middle truncation.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

from alignspec.errors import AlignspecError

Messages = Sequence[dict[str, str]]
TRUNCATE_MODES = ("none", "middle")
#: the roles chat templates know (OpenAI's chat roles; ``tool`` carries a tool's result)
ROLES = ("system", "user", "assistant", "tool")


def check_text(value: object, what: str) -> str:
    """``value`` if it is a string that UTF-8 can encode, else one sentence saying what is wrong.

    A lone surrogate (what Python makes of invalid UTF-8 bytes in ``argv``, or what a JSON
    ``"\\udc80"`` decodes to) is a ``str`` that no tokenizer can encode; it is refused here,
    where the text comes in, instead of as a ``TypeError`` deep inside the tokenizer.
    """
    if not isinstance(value, str):
        raise AlignspecError(f"{what} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise AlignspecError(
            f"{what} is not valid Unicode text (a lone surrogate such as "
            f"{value[exc.start]!r} at character {exc.start}; invalid UTF-8 input?)"
        ) from None
    return value


def check_messages(prompt: object) -> list[dict[str, str]]:
    """Chat messages as a list, each a mapping with a known ``role`` and a string ``content``."""
    if isinstance(prompt, (str, bytes, bytearray)) or not isinstance(prompt, Sequence):
        raise AlignspecError(
            f"the prompt must be a string or a list of chat messages, got {type(prompt).__name__}"
        )
    messages = list(prompt)
    if not messages:
        raise AlignspecError("the message list is empty")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise AlignspecError(f"message {i} needs a 'role' and a 'content' (a dict)")
        if m["role"] not in ROLES:
            raise AlignspecError(
                f"message {i} has an unknown role {m['role']!r}; use one of {', '.join(ROLES)}"
            )
        check_text(m["content"], f"the content of message {i}")
    return [dict(m) for m in messages]


def check_prompt_ids(ids: object, vocab_size: int) -> list[int]:
    """Ready prompt token ids as ints, each a valid row of the model's vocabulary."""
    if isinstance(ids, (str, bytes, bytearray, Mapping)) or not hasattr(ids, "__iter__"):
        raise AlignspecError(f"prompt_ids must be a list of token ids, got {type(ids).__name__}")
    out: list[int] = []
    for i, tok in enumerate(ids):  # type: ignore[union-attr]
        try:
            if isinstance(tok, bool):
                raise TypeError
            value = operator.index(tok)
        except TypeError:
            raise AlignspecError(
                f"prompt_ids[{i}] must be an integer token id, got {tok!r}"
            ) from None
        if not 0 <= value < vocab_size:
            raise AlignspecError(
                f"prompt_ids[{i}] = {value} is outside the model's vocabulary [0, {vocab_size})"
            )
        out.append(value)
    if not out:
        raise AlignspecError("the prompt is empty")
    return out


def encode_prompt(tokenizer: Any, prompt: str | Messages, *, raw: bool = False) -> list[int]:
    """Token ids for ``prompt`` (a string, or chat messages with role/content), never empty."""
    if isinstance(prompt, str):
        check_text(prompt, "the prompt")
        if not prompt.strip():
            raise AlignspecError("the prompt is empty")
        if raw or not getattr(tokenizer, "chat_template", None):
            return _nonempty(list(tokenizer(prompt)["input_ids"]))
        messages: Messages = [{"role": "user", "content": prompt}]
    else:
        messages = check_messages(prompt)
        if raw or not getattr(tokenizer, "chat_template", None):
            raise AlignspecError("chat messages need a model with a chat template (not --raw)")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return _nonempty([int(t) for t in ids])


def _nonempty(ids: list[int]) -> list[int]:
    if not ids:
        raise AlignspecError("the prompt is empty after tokenisation")
    return ids


def truncate_middle(ids: list[int], max_len: int) -> list[int]:
    """Keep the first and last halves of ``ids`` (LongBench's truncation).

    The start holds the instruction and the end the question, so the middle of the context is
    the cheapest part to lose. The head gets the odd token, so the result is exactly
    ``max_len`` long (LongBench itself keeps ``max_len // 2`` on each side).
    """
    if len(ids) <= max_len:
        return list(ids)
    tail = max_len // 2
    return list(ids[: max_len - tail]) + (list(ids[len(ids) - tail :]) if tail else [])


def fit_context(
    ids: list[int], *, max_new_tokens: int, max_context: int, truncate: str = "none"
) -> list[int]:
    """Check (or middle-truncate) a prompt so prompt + ``max_new_tokens`` fits the context."""
    if truncate not in TRUNCATE_MODES:
        raise AlignspecError(f"unknown truncation '{truncate}'; choose one of {TRUNCATE_MODES}")
    if max_new_tokens >= max_context:
        raise AlignspecError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
            f"{max_context}-token context"
        )
    budget = max_context - max_new_tokens
    if len(ids) <= budget:
        return ids
    if truncate == "middle":
        return truncate_middle(ids, budget)
    raise AlignspecError(
        f"the prompt is {len(ids)} tokens, and with max_new_tokens={max_new_tokens} it exceeds "
        f"the model's {max_context}-token context; shorten it or pass --truncate middle"
    )
