"""The Verifier seam.

A verifier sees the draft tree, the target's logits at every row and the request's context
(committed tokens, sampling settings, random generator) and returns the accepted root-to-node
path plus one bonus token. Every round therefore commits at least one token, and the engine
never needs to know which acceptance rule is in play.

The logits a verifier receives already carry the request's repetition penalty, applied per row
over the committed tokens plus the row's draft path (see :mod:`alignspec.sampling`), so no
acceptance rule can forget it; temperature, top-k and top-p are applied by the verifier from
``ctx.sampling`` because only sampling rules need them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from alignspec.rows import RowLogits
from alignspec.sampling import SamplingParams
from alignspec.tree import DraftTree


@dataclass
class VerifyContext:
    """Per-request state a verifier may need.

    ``committed`` is every token so far (prompt, generated, and the root last). ``generator``
    drives every random draw of the request (``None``: torch's global generator).
    """

    committed: list[int]
    eos_ids: frozenset[int] = frozenset()
    generator: torch.Generator | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)


@dataclass
class VerifyResult:
    """The accepted path: ``rows`` (root first, so ``rows[0] == 0``) and the committed tokens.

    ``tokens`` are the accepted draft tokens in path order followed by the bonus token.
    """

    rows: list[int]
    tokens: list[int] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        """Draft tokens accepted (the bonus token not counted)."""
        return len(self.rows) - 1


class Verifier(ABC):
    """Acceptance rule. ``lossless`` says whether outputs equal plain decoding's.

    ``samples`` says whether the rule handles temperature > 0. It is ``False`` by default so a
    greedy-only rule (greedy exact, AASD's conditional verification) can never silently turn a
    sampled request into a greedy one: the engine refuses that combination.
    """

    name: str = "verifier"
    lossless: bool = True
    samples: bool = False

    @abstractmethod
    def verify(
        self, tree: DraftTree, logits: RowLogits | torch.Tensor, ctx: VerifyContext
    ) -> VerifyResult:
        """Pick the accepted path in ``tree`` given the target's logits at its rows.

        ``logits`` computes a row's logits when it is first read (:class:`RowLogits`: ask
        for the rows the rule needs, root first); a ``[tree.num_rows, V]`` tensor is accepted
        too, so a rule can be tested on hand-made logits.
        """
