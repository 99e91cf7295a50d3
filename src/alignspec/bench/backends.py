"""One interface over alignspec's methods and the peers (transformers', llama.cpp's): a turn in,
a result out.

The runner drives conversations without knowing who generates them; each backend turns one
prompt (chat messages, or raw text for code completion) into a :class:`TurnResult` with the
same fields, so engine methods and peers land in the same record format.

Method names are read from :data:`alignspec.methods.REGISTRY` at call time, never from a list
kept here, so methods registered later (by other modules) are benchmarkable as soon as they
exist.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from alignspec.bench.llamacpp import LLAMACPP_PEERS, LlamaCppRunner
from alignspec.bench.peers import PEERS, PeerOutput, peer_generate
from alignspec.errors import AlignspecError
from alignspec.methods import REGISTRY
from alignspec.prompting import Messages
from alignspec.sampling import SamplingParams
from alignspec.text import TextAssembler

TRUNCATE = "middle"
"""Over-long prompts (Multi-News, long conversations) keep their head and tail, as LongBench."""

DRAFT_MODEL_OPTION = "draft_model"
"""A registry method with an option of this name gets ``--draft-model`` unless given one."""


@dataclass
class TurnResult:
    """One generated turn, in the units of the benchmark record."""

    text: str
    token_ids: list[int]
    new_tokens: int
    wall_time: float  # seconds, prefill included, tokenisation of the prompt excluded
    prompt_tokens: int
    finish_reason: str
    accept_lengths: list[int] = field(default_factory=list)  # committed tokens per round
    proposed_lengths: list[int] = field(default_factory=list)  # draft depth per round
    proposed_nodes: list[int] = field(default_factory=list)  # draft tree size per round
    draft_time: float = 0.0
    verify_time: float = 0.0
    overhead_time: float = 0.0  # engine time that is neither drafting nor target forwards
    prefill_time: float | None = None
    forward_passes: int | None = None  # peers only: target forward calls, prefill included


TurnFn = Callable[[str | Messages, bool, int], TurnResult]


@dataclass
class Backend:
    """A named way to generate one turn, and what the summary may claim about it."""

    name: str
    lossless: bool
    peer: bool
    run: TurnFn  # (prompt, raw, max_new_tokens) -> TurnResult

    @property
    def has_round_stats(self) -> bool:
        """Engine methods report accepted lengths and draft/verify times; peers cannot."""
        return not self.peer


def known_methods() -> list[str]:
    """Every name the bench accepts right now: the registry's methods, then the peers."""
    return [*REGISTRY, *PEERS, *LLAMACPP_PEERS]


def resolve_methods(methods: str | Sequence[str], baseline: str) -> list[str]:
    """Parse and check the method list; the baseline is run first (added when not listed).

    Running the baseline is what makes speedup and identity measurable at all, so it is added
    rather than treated as a mistake.
    """
    if isinstance(methods, str):
        methods = methods.split(",")
    names = [m.strip() for m in methods if m.strip()]
    if not names:
        raise AlignspecError("no methods given; pass --methods with names such as ar,pld")
    known = known_methods()
    for name in [*names, baseline]:
        if name not in known:
            raise AlignspecError(f"unknown method '{name}'; choose one of {', '.join(known)}")
    for name in names:
        if names.count(name) > 1:
            raise AlignspecError(f"method '{name}' is listed twice in --methods")
    return [baseline, *(n for n in names if n != baseline)]


def _own_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The given options that method ``name`` takes and that are not its defining presets.

    One command line carries options for several methods, so each takes what it knows;
    presets (``pld-tree``'s ``tree=True``) are what make a method itself and are kept.
    """
    method = REGISTRY[name]
    names = option_names(method)
    return {k: v for k, v in options.items() if k in names and k not in method.presets}


def takes_draft_model(name: str) -> bool:
    """Whether registry method ``name`` declares a ``draft_model`` option (``sps`` does)."""
    method = REGISTRY.get(name)
    return method is not None and DRAFT_MODEL_OPTION in option_names(method)


def option_names(method: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(method.options)}


def draft_path(draft: Any | None) -> str | None:
    """The model path or name behind ``draft`` (a path, or a loaded LLM that knows its source)."""
    if draft is None:
        return None
    if isinstance(draft, str | os.PathLike):
        return str(draft)
    source = getattr(draft, "source", None)
    return source.location if source is not None else None


def method_config(name: str, options: Mapping[str, Any], draft: Any | None) -> dict[str, Any]:
    """The options method ``name`` is called with: its own share, plus the draft model path."""
    own = _own_options(name, options)
    path = draft_path(draft)
    if takes_draft_model(name) and DRAFT_MODEL_OPTION not in own and path is not None:
        own[DRAFT_MODEL_OPTION] = path
    return own


def check_options(names: Sequence[str], options: Mapping[str, Any], draft: Any | None) -> None:
    """Fail before any model loads on options no listed method takes, or a missing draft.

    Each method's option dataclass is built once here, so its own validation (such as
    ``sps`` refusing to run without a draft model) reports before the target loads.
    """
    engine = [n for n in names if n in REGISTRY]
    used = {k for n in engine for k in _own_options(n, options)}
    used |= {k for n in names if n in LLAMACPP_PEERS for k in LLAMACPP_PEERS[n].options}
    unused = sorted(set(options) - used)
    if unused:
        listed = ", ".join(n for n in names if n in REGISTRY or n in LLAMACPP_PEERS) or "none"
        raise AlignspecError(
            f"option(s) {', '.join(unused)} are not taken by any listed method ({listed}) "
            "or are fixed by its preset"
        )
    for name in engine:
        try:
            REGISTRY[name].make_options(method_config(name, options, draft))
        except TypeError as exc:
            raise AlignspecError(f"method '{name}' options are incomplete: {exc}") from None
    for name in names:
        if name in PEERS and PEERS[name].needs_draft and draft is None:
            raise AlignspecError(f"method '{name}' needs a draft model; pass --draft-model")


def check_sampling(names: Sequence[str], sampling: SamplingParams) -> None:
    """Fail before any model loads when a listed method cannot run these sampling settings.

    Greedy-only engine methods (the lossy ones) refuse T > 0 as they do in ``generate``; the
    peers are benchmarked with their greedy defaults only, so any other setting is refused
    for them rather than silently ignored.
    """
    for name in names:
        if name in REGISTRY:
            REGISTRY[name].check_sampling(sampling)
        elif sampling != SamplingParams():
            raise AlignspecError(
                f"peer '{name}' is benchmarked with greedy decoding only; drop it from "
                "--methods or leave the sampling flags at their defaults"
            )


def make_backends(
    llm: Any,
    names: Sequence[str],
    options: Mapping[str, Any] | None = None,
    draft: Any | None = None,
    *,
    budget: str | int = "auto",
    sampling: SamplingParams | None = None,
) -> list[Backend]:
    """Backends for ``names`` on one loaded model.

    ``draft`` is a model path/name or a loaded LLM: registry methods with a ``draft_model``
    option get its path (they load it themselves), and peers that need an assistant get an
    LLM, loaded here on the target's device and dtype only when one of them is listed.
    """
    options = dict(options or {})
    sampling = sampling or SamplingParams()
    check_options(names, options, draft)
    check_sampling(names, sampling)
    needs_llm = any(n in PEERS and PEERS[n].needs_draft for n in names)
    draft_llm = _draft_llm(llm, draft) if needs_llm else None
    backends = []
    for name in names:
        if name in REGISTRY:
            config = method_config(name, options, draft)
            # SamplingParams' fields are LLM.generate's sampling keywords
            settings = {**config, "budget": budget, **dataclasses.asdict(sampling)}
            run = _engine_turn(llm, name, settings)
            backends.append(Backend(name, REGISTRY[name].lossless, False, run))
        elif name in LLAMACPP_PEERS:
            peer = LLAMACPP_PEERS[name]
            runner = LlamaCppRunner(llm, peer, options)
            backends.append(Backend(name, peer.lossless, True, _ids_turn(llm, runner.generate)))
        else:
            peer = PEERS[name]
            backends.append(Backend(name, peer.lossless, True, _peer_turn(llm, name, draft_llm)))
    return backends


def _draft_llm(llm: Any, draft: Any) -> Any:
    """A loaded draft LLM for transformers' assisted generation."""
    if not isinstance(draft, str | os.PathLike):
        return draft
    from alignspec.api import load

    param = next(llm.model.parameters())
    return load(str(draft), device=str(param.device), dtype=param.dtype)


def _engine_turn(llm: Any, method: str, options: Mapping[str, Any]) -> TurnFn:
    """A turn through ``llm.generate``: the path users take, so its overheads count too."""

    def run(prompt: str | Messages, raw: bool, max_new_tokens: int) -> TurnResult:
        out = llm.generate(
            prompt,
            method=method,
            raw=raw,
            truncate=TRUNCATE,
            max_new_tokens=max_new_tokens,
            **options,
        )
        stats = out.stats
        return TurnResult(
            text=out.text,
            token_ids=list(out.token_ids),
            new_tokens=stats.new_tokens,
            wall_time=stats.wall_time,
            prompt_tokens=len(out.prompt_ids),
            finish_reason=out.finish_reason,
            accept_lengths=list(stats.accept_lengths),
            proposed_lengths=[r.depth for r in stats.rounds],
            proposed_nodes=[r.proposed for r in stats.rounds],
            overhead_time=sum(r.overhead for r in stats.rounds),
            draft_time=stats.draft_time,
            verify_time=stats.verify_time,
            prefill_time=stats.prefill_time,
        )

    return run


def _peer_turn(llm: Any, name: str, draft: Any | None) -> TurnFn:
    """A turn through transformers' ``generate`` on the same prompt ids the engine would use."""
    peer = PEERS[name]

    def generate(ids: list[int], max_new_tokens: int) -> PeerOutput:
        return peer_generate(llm, peer, ids, max_new_tokens, draft)

    return _ids_turn(llm, generate)


def _ids_turn(llm: Any, generate: Callable[[list[int], int], PeerOutput]) -> TurnFn:
    """A peer turn: alignspec renders and encodes the prompt, the peer generates from the ids.

    Encoding here (chat template, middle truncation) is what gives every peer the prompt ids
    the engine sees; the text is decoded back by alignspec for the same reason.
    """
    decoder = TextAssembler(llm.tokenizer)

    def run(prompt: str | Messages, raw: bool, max_new_tokens: int) -> TurnResult:
        ids = llm.encode(prompt, raw=raw, max_new_tokens=max_new_tokens, truncate=TRUNCATE)
        out = generate(ids, max_new_tokens)
        hit_eos = bool(out.token_ids) and out.token_ids[-1] in llm.eos_ids
        return TurnResult(
            text=decoder.decode(out.token_ids),
            token_ids=out.token_ids,
            new_tokens=len(out.token_ids),
            wall_time=out.wall_time,
            prompt_tokens=len(ids),
            finish_reason="stop" if hit_eos else "length",
            forward_passes=out.forward_passes,
        )

    return run
