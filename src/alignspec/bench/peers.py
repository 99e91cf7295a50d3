"""Peer implementations from ``transformers`` itself, run on the same model object.

Comparing against transformers' own ``generate`` on the very same weights separates what
alignspec's engine costs or saves from what the method does: ``hf-ar`` is the reference for
plain greedy decoding, ``hf-pld`` for prompt lookup, ``hf-assisted`` for a draft model.

Greedy outputs must be comparable token for token with the engine's, so a peer call:

* uses the same prompt ids (the caller encodes them once, as the engine does);
* swaps in a clean :class:`~transformers.GenerationConfig` for the call, so no processor the
  model's saved config may ask for (repetition penalty, suppressed tokens, sampling) applies;
* stops on ``llm.eos_ids`` and keeps the EOS token, as the engine does, or at exactly
  ``max_new_tokens``.

Per-round accepted lengths are not observable from outside ``generate``. Only the number of
target forward passes is (a pre-hook counts them), which gives the mean accepted length, but
no per-round distribution, so the bench leaves ``accept_lengths`` empty for peers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from alignspec.errors import AlignspecError


@dataclass(frozen=True)
class Peer:
    """A transformers decoding mode the bench can run beside alignspec's methods."""

    name: str
    description: str
    lossless: bool = True  # greedy: identical to plain decoding up to fp rounding
    needs_draft: bool = False
    options: tuple[tuple[str, Any], ...] = ()  # extra GenerationConfig fields


PEERS: dict[str, Peer] = {
    peer.name: peer
    for peer in (
        Peer("hf-ar", "transformers model.generate, greedy"),
        Peer(
            "hf-pld",
            "transformers prompt lookup decoding (prompt_lookup_num_tokens=10)",
            options=(("prompt_lookup_num_tokens", 10),),
        ),
        Peer(
            "hf-assisted",
            "transformers assisted generation with --draft-model as the assistant",
            needs_draft=True,
        ),
    )
}
"""Peer name -> description; the bench accepts these next to the method registry's names."""


@dataclass
class PeerOutput:
    """What one peer generation produced."""

    token_ids: list[int]  # new tokens only, EOS included when reached
    wall_time: float  # seconds inside ``generate`` (prefill included)
    forward_passes: int | None  # target forward calls (prefill included), None if unseen


def greedy_config(llm: Any, max_new_tokens: int, **extra: Any) -> Any:
    """A generation config with nothing but greedy decoding, EOS, the budget and ``extra``."""
    from transformers import GenerationConfig

    eos = sorted(llm.eos_ids)
    pad = getattr(llm.tokenizer, "pad_token_id", None)
    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos or None,
        pad_token_id=pad if pad is not None else (eos[0] if eos else None),
        bos_token_id=getattr(llm.model.generation_config, "bos_token_id", None),
        **extra,
    )


def peer_generate(
    llm: Any,
    peer: Peer,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    draft: Any | None = None,
) -> PeerOutput:
    """Run one greedy generation with transformers' ``generate`` on ``llm.model``."""
    model = llm.model
    kwargs: dict[str, Any] = {}
    if peer.needs_draft:
        if draft is None:
            raise AlignspecError(f"method '{peer.name}' needs a draft model; pass --draft-model")
        kwargs["assistant_model"] = draft.model
        if draft.tokenizer.get_vocab() != llm.tokenizer.get_vocab():
            # universal assisted decoding translates between the two vocabularies
            kwargs.update(tokenizer=llm.tokenizer, assistant_tokenizer=draft.tokenizer)
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    calls = [0]

    def count(_module: Any, _args: Any) -> None:
        calls[0] += 1

    saved = model.generation_config
    # generate() fills unset fields from model.generation_config: give it a clean one
    model.generation_config = greedy_config(llm, max_new_tokens, **dict(peer.options))
    hook = model.register_forward_pre_hook(count)
    try:
        with torch.inference_mode():
            _sync(device)
            start = time.perf_counter()
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                generation_config=model.generation_config,
                **kwargs,
            )
            _sync(device)
            wall = time.perf_counter() - start
    finally:
        hook.remove()
        model.generation_config = saved
    new = [int(t) for t in out[0, ids.shape[1] :].tolist()]
    return PeerOutput(cut_like_engine(new, llm.eos_ids, max_new_tokens), wall, calls[0] or None)


def cut_like_engine(ids: Sequence[int], eos_ids: frozenset[int], max_new_tokens: int) -> list[int]:
    """Apply the engine's stopping rule: keep through the first EOS, at most the budget.

    transformers already stops there; this guards against a version that lets a multi-token
    acceptance run past EOS, which would make identity checks fail for the wrong reason.
    """
    kept: list[int] = []
    for tok in ids[:max_new_tokens]:
        kept.append(int(tok))
        if tok in eos_ids:
            break
    return kept


def _sync(device: torch.device) -> None:
    """Finish queued GPU work so the timer measures the generation, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
