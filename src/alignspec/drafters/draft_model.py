"""A small draft model drafts a chain (method ``sps``, speculative sampling à la Leviathan/Chen).

A second causal LM with the target's tokenizer proposes ``draft_len`` tokens autoregressively:
the argmax at temperature 0, a draw from its own distribution ``q`` at temperature > 0, where
``q`` goes through the same repetition penalty, temperature, top-k and top-p as the target's
``p`` (any ``q`` keeps the output exact; a ``q`` shaped like ``p`` gets more drafts accepted).
The rows of ``q`` travel in ``DraftTree.draft_probs`` for the lossless verifier.

The draft model runs through :class:`~alignspec.targets.hf.HFTarget`, whose KV cache holds only
*committed* tokens. Each round first feeds the tokens committed since the last round (the
accepted drafts and the bonus) in one forward and commits them, then drafts; the drafted tokens
are scored in forwards whose cache rows are dropped again (``commit([])``). Rolling back to the
accepted prefix is therefore free: rejected drafts never entered the cache, and accepted ones
are re-fed with the bonus as a single short chain next round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from alignspec.drafters.base import Drafter
from alignspec.errors import AlignspecError
from alignspec.options import check_fields
from alignspec.rows import RowLogits, argmax
from alignspec.sampling import SamplingParams
from alignspec.targets.base import PrefillOutput
from alignspec.targets.hf import HFTarget
from alignspec.tree import DraftTree


@dataclass
class DraftModelConfig:
    """Options of the draft-model drafter (method ``sps``)."""

    draft_model: str = field(
        default="",
        metadata={
            "help": "draft model: a HF directory, .gguf file or hub id with the target's "
            "tokenizer ('default' = the embedded model)"
        },
    )
    draft_len: int = field(default=4, metadata={"help": "tokens drafted per round", "min": 1})

    def __post_init__(self) -> None:
        check_fields(self, "sps")
        if not self.draft_model:
            raise AlignspecError(
                "method 'sps' needs a draft model: pass --draft-model (draft_model=) with a "
                "smaller causal LM that shares the target's tokenizer"
            )
        if self.draft_len < 1:
            raise AlignspecError(f"draft_len must be at least 1, got {self.draft_len}")


class DraftModelDrafter(Drafter):
    """Drafts a chain with a second causal LM; keeps its ``q`` rows when sampling.

    ``target_vocab`` is the target's LM-head size: draft tokens beyond it are never proposed
    and ``q`` rows are cut or zero-padded to it, so the verifier can compare ``p`` and ``q``.
    """

    costly = True

    def __init__(self, model: torch.nn.Module, draft_len: int, target_vocab: int) -> None:
        if draft_len < 1:
            raise AlignspecError(f"draft_len must be at least 1, got {draft_len}")
        self.runner = HFTarget(model)
        self.draft_len = draft_len
        self.target_vocab = target_vocab
        self.sampling = SamplingParams()
        self.generator: torch.Generator | None = None
        self._cached = 0  # committed tokens whose KV the draft cache holds

    def set_sampling(self, sampling: SamplingParams, generator: torch.Generator | None) -> None:
        self.sampling = sampling
        self.generator = generator

    def begin(self, prompt: list[int], prefill: PrefillOutput) -> None:
        self.runner.prefill(prompt)
        self._cached = len(prompt)

    @torch.inference_mode()
    def propose(self, tokens: list[int]) -> DraftTree:
        pending = tokens[self._cached :]
        if not pending:
            raise RuntimeError("propose() without a newly committed token since the last round")
        # catch up on what the last round committed (accepted drafts + bonus), keep it cached
        out = self.runner.verify(pending[0], DraftTree.chain(pending[1:]))
        self.runner.commit(list(range(len(pending))))
        self._cached = len(tokens)
        logits = RowLogits.wrap(out.logits).row(len(pending) - 1)
        drafted: list[int] = []
        rows: list[torch.Tensor] = []
        while True:
            token, q = self._pick(logits, [*tokens, *drafted])
            drafted.append(token)
            if q is not None:
                rows.append(q)
            if len(drafted) == self.draft_len:
                break
            # score the draft so far beyond the committed cache, then drop those cache rows
            out = self.runner.verify(drafted[0], DraftTree.chain(drafted[1:]))
            self.runner.commit([])
            logits = RowLogits.wrap(out.logits).row(len(drafted) - 1)
        probs = torch.stack(rows) if rows else None
        return DraftTree(tokens=drafted, parents=list(range(len(drafted))), draft_probs=probs)

    def _pick(self, logits: torch.Tensor, context: list[int]) -> tuple[int, torch.Tensor | None]:
        """The next draft token after ``context`` and the ``q`` it was drawn from (None: argmax)."""
        logits = self._fit_vocab(self.sampling.penalize(logits[None], context)[0])
        if self.sampling.greedy:
            return argmax(logits), None
        q = self.sampling.probs(logits[None])[0]
        return self.sampling.sample(q, self.generator), q

    def _fit_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits over exactly the target's vocabulary (missing ids get -inf, so q = 0)."""
        size = logits.shape[-1]
        if size > self.target_vocab:
            return logits[: self.target_vocab]
        if size < self.target_vocab:
            pad = logits.new_full((self.target_vocab - size,), float("-inf"))
            return torch.cat([logits, pad])
        return logits
