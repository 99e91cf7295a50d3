"""OpenAI response objects and stream chunks for both endpoints.

Chat and text completions differ only in object names and where the text goes (``message`` /
``delta`` vs ``text``), so one :class:`Shape` per endpoint carries those differences and the
app streams both the same way. Every figure in the ``alignspec`` block is read from
:class:`~alignspec.stats.SpecCounters`; JSON has no NaN, so "nothing to count" is ``null``.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from alignspec.api import GenerationOutput


def usage(out: GenerationOutput) -> dict[str, int]:
    """OpenAI's ``usage``; ``/metrics`` counts tokens with this same function."""
    prompt, completion = len(out.prompt_ids), len(out.token_ids)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _number(x: float) -> float | None:
    return None if math.isnan(x) else x


def alignspec_block(out: GenerationOutput) -> dict[str, Any]:
    """The method and its speculation figures for one response."""
    c = out.stats.counters
    return {
        "method": out.method,
        "tau": _number(c.tau),
        "acceptance_rate": _number(c.acceptance_rate),
        "mean_acceptance_length": _number(c.mean_acceptance_length),
        "rounds": c.num_rounds,
        "num_drafts": c.num_drafts,
        "num_draft_tokens": c.num_draft_tokens,
        "num_accepted_tokens": c.num_accepted_tokens,
        "tokens_per_s": out.stats.tokens_per_s,
    }


@dataclass
class Shape:
    """One endpoint's object names, built once per request (id and time are per response)."""

    chat: bool
    model: str

    def __post_init__(self) -> None:
        prefix = "chatcmpl" if self.chat else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def completion(self, out: GenerationOutput) -> dict[str, Any]:
        """The whole non-streamed response."""
        choice: dict[str, Any] = {"index": 0, "finish_reason": out.finish_reason, "logprobs": None}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": out.text}
        else:
            choice["text"] = out.text
        obj = "chat.completion" if self.chat else "text_completion"
        body = self._envelope(obj, [choice])
        body["usage"] = usage(out)
        body["alignspec"] = alignspec_block(out)
        return body

    def chunk(
        self, text: str | None, finish_reason: str | None = None, *, first: bool = False
    ) -> dict[str, Any]:
        """One stream chunk: text, or (``text=None``) the end with its finish reason."""
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text is not None:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice["text"] = text or ""
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return self._envelope(obj, [choice])

    def final_chunk(self, out: GenerationOutput) -> dict[str, Any]:
        body = self.chunk(None, out.finish_reason)
        body["alignspec"] = alignspec_block(out)
        return body

    def usage_chunk(self, out: GenerationOutput) -> dict[str, Any]:
        """``stream_options.include_usage``: a last chunk with no choices and the usage."""
        body = self._envelope("chat.completion.chunk" if self.chat else "text_completion", [])
        body["usage"] = usage(out)
        body["alignspec"] = alignspec_block(out)
        return body
