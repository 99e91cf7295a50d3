"""A validated request body -> a :class:`GenerationRequest`, or a 400 that says why.

Everything that can be checked without the model (method, options, sampling values, the fields
OpenAI has and alignspec does not implement) is checked here, before the request queues, so a
bad request never waits behind others to be refused. Prompt length needs the tokenizer and is
checked when the generation starts (still a 400).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from alignspec.errors import AlignspecError
from alignspec.methods import get_method
from alignspec.sampling import SamplingParams
from alignspec.server.errors import APIError
from alignspec.server.scheduler import GenerationRequest
from alignspec.server.schemas import ChatCompletionRequest, CommonRequest, CompletionRequest

#: OpenAI's default for ``/v1/completions`` when ``max_tokens`` is absent
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


@dataclass
class ServeConfig:
    """What ``alignspec serve`` was started with: the defaults of every request."""

    model_name: str
    method: str = "pld"
    options: dict[str, Any] = field(default_factory=dict)  # for the default method
    sampling: SamplingParams = field(default_factory=SamplingParams)
    default_max_tokens: int = 256  # chat completions without max_tokens
    vocab_size: int | None = None  # token-id prompts are checked against it


def _refuse(param: str, message: str) -> APIError:
    return APIError(400, message, param=param)


def _check_unsupported(body: CommonRequest) -> None:
    """OpenAI fields alignspec does not implement: fine at their neutral value only."""
    if body.n != 1:
        raise _refuse("n", f"only n=1 is supported, got n={body.n}")
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(body, name):
            raise _refuse(name, f"{name} is not supported (use alignspec.repetition_penalty)")
    if body.logit_bias:
        raise _refuse("logit_bias", "logit_bias is not supported")
    if getattr(body, "logprobs", None) or getattr(body, "top_logprobs", None):
        raise _refuse("logprobs", "logprobs are not supported by alignspec serve")
    if isinstance(body, ChatCompletionRequest):
        if body.tools or body.tool_choice not in (None, "none"):
            raise _refuse("tools", "tool calling is not supported")
        if body.response_format and body.response_format.get("type", "text") != "text":
            raise _refuse("response_format", "only response_format type 'text' is supported")
    if isinstance(body, CompletionRequest):
        if body.echo:
            raise _refuse("echo", "echo is not supported")
        if body.suffix:
            raise _refuse("suffix", "suffix is not supported")
        if body.best_of not in (None, 1):
            raise _refuse("best_of", "only best_of=1 is supported")


#: JSON types each option annotation accepts (bool is not an int here, unlike in Python)
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
}


def _check_option_types(options_cls: type, given: dict[str, Any]) -> None:
    """Option values must have their field's JSON type (the dataclasses do not check types)."""
    kinds = {
        f.name: str(getattr(f.type, "__name__", f.type)) for f in dataclasses.fields(options_cls)
    }
    for name, value in given.items():
        allowed = JSON_TYPES.get(kinds.get(name, ""))
        wrong = isinstance(value, bool) and bool not in (allowed or (bool,))
        if allowed is not None and (wrong or not isinstance(value, allowed)):
            raise _refuse(
                "alignspec.options", f"option {name} must be of type {kinds[name]}, got {value!r}"
            )


def _method(body: CommonRequest, config: ServeConfig) -> tuple[str, dict[str, Any]]:
    """The request's method and options (server options apply to the server's method)."""
    ext = body.alignspec
    name = ext.method or config.method
    try:
        method = get_method(name)
    except AlignspecError as exc:
        raise _refuse("alignspec.method", str(exc)) from None
    options = {**(config.options if name == config.method else {}), **ext.options}
    try:
        _check_option_types(method.options, options)  # skips unknown names: make_options
        method.make_options(options)  # names them with the allowed ones
    except AlignspecError as exc:
        raise _refuse("alignspec.options", str(exc)) from None
    except TypeError as exc:
        raise _refuse("alignspec.options", f"invalid option value: {exc}") from None
    return name, options


def _sampling(body: CommonRequest, config: ServeConfig, method: str) -> SamplingParams:
    base = config.sampling
    values = {
        "temperature": base.temperature if body.temperature is None else body.temperature,
        "top_p": base.top_p if body.top_p is None else body.top_p,
        "top_k": base.top_k if body.alignspec.top_k is None else body.alignspec.top_k,
        "seed": base.seed if body.seed is None else body.seed,
        "repetition_penalty": base.repetition_penalty
        if body.alignspec.repetition_penalty is None
        else body.alignspec.repetition_penalty,
    }
    try:
        sampling = SamplingParams(**values)
        get_method(method).check_sampling(sampling)
    except AlignspecError as exc:
        raise _refuse("temperature", str(exc)) from None
    return sampling


def _stops(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def plan(body: ChatCompletionRequest | CompletionRequest, config: ServeConfig) -> GenerationRequest:
    """Translate one request body; raises :class:`APIError` (400/404) for what it cannot do."""
    if body.model != config.model_name:
        raise APIError(
            404,
            f"the model '{body.model}' does not exist; this server serves '{config.model_name}'",
            param="model",
            code="model_not_found",
        )
    _check_unsupported(body)
    method, options = _method(body, config)
    sampling = _sampling(body, config, method)
    request = GenerationRequest(
        method=method,
        max_new_tokens=0,
        truncate=body.alignspec.truncate,
        stop=_stops(body.stop),
        sampling=asdict(sampling),
        options=options,
    )
    if isinstance(body, ChatCompletionRequest):
        request.max_new_tokens = (
            body.max_completion_tokens or body.max_tokens or config.default_max_tokens
        )
        request.prompt = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
    else:
        request.max_new_tokens = body.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS
        request.raw = True
        prompt = body.prompt
        if isinstance(prompt, list) and not prompt:
            raise _refuse("prompt", "the prompt is empty")
        if isinstance(prompt, list) and isinstance(prompt[0], int):
            vocab = config.vocab_size
            if vocab is not None and not all(0 <= t < vocab for t in prompt):  # type: ignore[operator]
                raise _refuse("prompt", f"token ids must be in [0, {vocab})")
            request.prompt_ids = list(prompt)  # type: ignore[arg-type]
        elif isinstance(prompt, list):
            if len(prompt) != 1:
                raise _refuse("prompt", "only one prompt per request is supported")
            request.prompt = prompt[0]
        else:
            request.prompt = prompt
        if request.prompt_ids is None and not str(request.prompt).strip():
            raise _refuse("prompt", "the prompt is empty")
    return request
