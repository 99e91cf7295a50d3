"""The Verifier seam.

A verifier sees the draft tree, the target's logits at every row and the request's context
(committed tokens, sampling settings, random generator) and returns the accepted root-to-node
path plus one bonus token. Every round therefore commits at least one token, and the engine
never needs to know which acceptance rule is in play.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from alignspec.tree import DraftTree


@dataclass
class VerifyContext:
    """Per-request state a verifier may need.

    ``committed`` is every token so far (prompt, generated, and the root last).
    """

    committed: list[int]
    eos_ids: frozenset[int] = frozenset()
    generator: torch.Generator | None = None


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
    """Acceptance rule. ``lossless`` says whether outputs equal plain decoding's."""

    name: str = "verifier"
    lossless: bool = True

    @abstractmethod
    def verify(self, tree: DraftTree, logits: torch.Tensor, ctx: VerifyContext) -> VerifyResult:
        """Pick the accepted path in ``tree`` given ``logits`` (``[tree.num_rows, V]``)."""
