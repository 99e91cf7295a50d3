"""Request bodies of ``/v1/chat/completions`` and ``/v1/completions``, with OpenAI's names.

Unknown-field policy: like OpenAI (and unlike vLLM, which ignores extras), an unknown top-level
field is a 400 naming it, so a typo such as ``max_token`` never silently falls back to a
default. The one extension is the ``alignspec`` object (method, options, truncation and the
vLLM-style sampling extras). OpenAI fields alignspec does not implement (``logprobs``, ``n`` > 1,
penalties, tools, ...) are accepted at their neutral value and refused otherwise, with a message
that names them (see :mod:`alignspec.server.plan`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from alignspec.prompting import TRUNCATE_MODES


class Strict(BaseModel):
    """Unknown fields and wrong JSON types ('"5"' for an integer) are refused, as OpenAI does."""

    model_config = ConfigDict(extra="forbid", strict=True)


class AlignspecOptions(Strict):
    """The ``alignspec`` extension field: per-request method and its options."""

    method: str | None = Field(None, description="a registered method; default: the server's")
    options: dict[str, Any] = Field(default_factory=dict, description="the method's options")
    truncate: Literal[TRUNCATE_MODES] = "none"  # type: ignore[valid-type]
    top_k: int | None = None
    repetition_penalty: float | None = None


class StreamOptions(Strict):
    include_usage: bool = False


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class CommonRequest(Strict):
    """Fields shared by both endpoints."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    alignspec: AlignspecOptions = Field(default_factory=AlignspecOptions)


class ChatCompletionRequest(CommonRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None


class CompletionRequest(CommonRequest):
    prompt: str | list[str] | list[int]
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
