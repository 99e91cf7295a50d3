"""AASD's conditional (flexible) verification: lossy by design, greedy setting.

A draft token that is not the target's argmax is still accepted when the target is confident
enough in it: ``p(x) >= min(tau(p), max p)`` and ``p(x) > p(EOS)``. The ``min(., max p)`` term
keeps the argmax always acceptable, so this never accepts less than greedy exact verification;
the EOS term stops a draft from talking the model past a point where it wanted to end. When
the argmax itself is EOS it is accepted too (the rule's own intent: argmax always passes).

``tau`` is ``constant`` (the authors' predecessor CASD uses 0.1, our default) or ``entropy``
(``beta - alpha * H(p)``, one third-party reading of the paper). Several children of a node can
pass, so the longest acceptable path is found by a search over the tree (first in order wins
ties); the bonus token is the argmax at its end.
"""

from __future__ import annotations

import torch

from alignspec.rows import RowLogits
from alignspec.tree import DraftTree
from alignspec.verifiers.base import Verifier, VerifyContext, VerifyResult


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats along the last dimension (0 log 0 = 0)."""
    logp = torch.log(probs.clamp_min(1e-30))
    return -(probs * logp).sum(dim=-1)


class ConditionalVerifier(Verifier):
    """Accept confident non-argmax drafts through a probability threshold."""

    name = "conditional"
    lossless = False

    def __init__(
        self, form: str = "constant", tau: float = 0.1, alpha: float = 0.1, beta: float = 0.1
    ) -> None:
        if form not in ("constant", "entropy"):
            raise ValueError(f"unknown threshold form {form!r}")
        self.form, self.tau, self.alpha, self.beta = form, tau, alpha, beta

    def thresholds(self, probs: torch.Tensor) -> torch.Tensor:
        """Per-row threshold ``tau(p)`` for probabilities ``[rows, V]``."""
        if self.form == "constant":
            return torch.full(probs.shape[:-1], self.tau, dtype=probs.dtype, device=probs.device)
        return self.beta - self.alpha * entropy(probs)

    def acceptable(
        self,
        tree: DraftTree,
        probs: torch.Tensor,
        eos_ids: frozenset[int],
        parent_rows: list[int] | None = None,
    ) -> list[bool]:
        """Whether each draft node passes the rule at its parent's distribution.

        ``probs`` holds a row per tree row, or only the rows named by ``parent_rows`` (the
        index of each node's parent in ``probs``).
        """
        if not len(tree):
            return []
        parents = torch.tensor(
            tree.parents if parent_rows is None else parent_rows, device=probs.device
        )
        toks = torch.tensor(tree.tokens, device=probs.device)
        p_parent = probs[parents]  # [n, V]
        p_x = p_parent.gather(1, toks[:, None])[:, 0]
        p_max, argmax = p_parent.max(dim=-1)
        tau = torch.minimum(self.thresholds(probs)[parents], p_max)
        ok = p_x >= tau
        if eos_ids:
            p_eos = p_parent[:, sorted(eos_ids)].max(dim=-1).values
            ok &= p_x > p_eos
        ok |= toks == argmax
        return ok.tolist()

    def verify(
        self, tree: DraftTree, logits: RowLogits | torch.Tensor, ctx: VerifyContext
    ) -> VerifyResult:
        logits = RowLogits.wrap(logits)
        # every parent row is needed to judge its children; leaves only for the bonus
        internal = sorted({0, *tree.parents})
        probs = torch.softmax(logits.rows(internal).float(), dim=-1)
        where = {row: k for k, row in enumerate(internal)}
        ok = self.acceptable(tree, probs, ctx.eos_ids, [where[p] for p in tree.parents])
        children = tree.children()
        # longest acceptable path: depth-first, children in order, first longest wins
        best: list[int] = [0]
        stack: list[list[int]] = [[0]]
        while stack:
            path = stack.pop()
            if len(path) > len(best):
                best = path
            for child in reversed(children[path[-1]]):
                if ok[child - 1]:
                    stack.append([*path, child])
        tokens = [tree.tokens[r - 1] for r in best[1:]]
        tokens.append(int(logits.row(best[-1]).argmax()))
        return VerifyResult(rows=best, tokens=tokens)
