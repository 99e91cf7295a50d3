"""Greedy exact verification: a node is accepted iff it is the target's argmax at its parent.

Walking from the root and always taking the first child that equals the argmax yields the
longest accepted path (siblings carry distinct tokens, so at most one child can match), and the
bonus is the argmax at the end of that path. The committed text is therefore exactly what plain
greedy decoding would produce.
"""

from __future__ import annotations

import torch

from alignspec.rows import RowLogits
from alignspec.tree import DraftTree
from alignspec.verifiers.base import Verifier, VerifyContext, VerifyResult


def walk_argmax(tree: DraftTree, logits: RowLogits | torch.Tensor) -> VerifyResult:
    """Follow the target's argmax down the tree, reading only the rows the walk reaches."""
    logits = RowLogits.wrap(logits)
    children = tree.children()
    row = 0
    rows = [0]
    tokens: list[int] = []
    while True:
        want = logits.argmax(row)
        nxt = next((c for c in children[row] if tree.tokens[c - 1] == want), None)
        if nxt is None:
            break
        rows.append(nxt)
        tokens.append(want)
        row = nxt
    tokens.append(want)
    return VerifyResult(rows=rows, tokens=tokens)


class GreedyVerifier(Verifier):
    """Lossless for greedy decoding."""

    name = "exact"
    lossless = True

    def verify(
        self, tree: DraftTree, logits: RowLogits | torch.Tensor, ctx: VerifyContext
    ) -> VerifyResult:
        return walk_argmax(tree, logits)
