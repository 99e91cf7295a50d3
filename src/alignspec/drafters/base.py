"""The Drafter seam (after transformers' candidate generators: one narrow interface).

A drafter is told about the request once (:meth:`Drafter.begin`, with the prefill output, which
AASD mines for the target's own choices at every prompt position), proposes a tree per round
(:meth:`Drafter.propose`) and hears what was accepted (:meth:`Drafter.update`) so stateful
drafters (feature heads, draft models) can roll their own caches back. Drafters that sample
(a draft model at temperature > 0) hear the request's sampling settings and random generator
first (:meth:`Drafter.set_sampling`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from alignspec.budget import Budget
from alignspec.rows import ExtraRows
from alignspec.sampling import SamplingParams
from alignspec.targets.base import PrefillOutput, VerifyOutput
from alignspec.tree import DraftTree
from alignspec.verifiers.base import VerifyResult


class Drafter(ABC):
    """Proposes draft trees. Subclasses set what they need from the target's prefill."""

    #: whether the drafter needs the target's last hidden states (feature drafters)
    needs_hidden: bool = False
    #: whether drafting costs a real share of a round (a model runs): the budget then charges
    #: the measured drafting time, and may skip the drafter when that does not pay
    costly: bool = False
    #: the request's draft budget, for drafters that can stop early (None: no budget)
    budget: Budget | None = None

    def set_budget(self, budget: Budget | None) -> None:
        """Hear the request's budget before :meth:`begin` (feature heads stop expanding when
        the next step is not worth its time)."""
        self.budget = budget

    def set_sampling(  # noqa: B027
        self, sampling: SamplingParams, generator: torch.Generator | None
    ) -> None:
        """Hear the request's sampling settings before :meth:`begin`.

        Point-mass drafters propose the same tree whatever the temperature and ignore them; a
        drafter that draws its tokens must draw them with ``generator`` so a seeded run
        repeats exactly.
        """

    def begin(self, prompt: list[int], prefill: PrefillOutput) -> None:  # noqa: B027
        """Start a request; the default drafter keeps no per-request state."""

    @abstractmethod
    def propose(self, tokens: list[int]) -> DraftTree:
        """Draft below the last token of ``tokens`` (prompt + generated, root last)."""

    def update(self, result: VerifyResult, out: VerifyOutput) -> None:  # noqa: B027
        """Hear the round's outcome; stateless drafters ignore it."""

    def extra_rows(self) -> ExtraRows | None:
        """Hidden states whose target logits this drafter wants from this round's LM-head
        call (see :meth:`RowLogits.attach`); ``None``, the default, wants none."""
        return None


class NoDrafter(Drafter):
    """Proposes nothing: the engine then does plain autoregressive decoding (method ``ar``)."""

    def propose(self, tokens: list[int]) -> DraftTree:
        return DraftTree()
