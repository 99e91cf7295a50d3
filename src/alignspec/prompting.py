"""Turning user input into prompt tokens: chat template, raw mode, context-length checks.

Instruct models answer well only inside their chat template, so a string prompt is wrapped as
one user message by default; ``raw`` skips the template (code completion, base models). A
prompt that does not fit the context with room for ``max_new_tokens`` is refused, as vLLM does,
unless the caller asks for LongBench-style middle truncation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alignspec.errors import AlignspecError

Messages = Sequence[dict[str, str]]
TRUNCATE_MODES = ("none", "middle")


def encode_prompt(tokenizer: Any, prompt: str | Messages, *, raw: bool = False) -> list[int]:
    """Token ids for ``prompt`` (a string, or chat messages with role/content)."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise AlignspecError("the prompt is empty")
        if raw or not getattr(tokenizer, "chat_template", None):
            return list(tokenizer(prompt)["input_ids"])
        messages: Messages = [{"role": "user", "content": prompt}]
    else:
        messages = list(prompt)
        if not messages:
            raise AlignspecError("the message list is empty")
        for m in messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise AlignspecError("each message needs a 'role' and a 'content'")
        if raw or not getattr(tokenizer, "chat_template", None):
            raise AlignspecError("chat messages need a model with a chat template (not --raw)")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return [int(t) for t in ids]


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
