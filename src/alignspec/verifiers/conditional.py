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

import numpy as np
import torch

from alignspec.rows import RowLogits
from alignspec.targets.base import top_probs
from alignspec.targets.native import cpu_kernel
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

    def thresholds(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-row threshold ``tau(p)`` for logits ``[rows, V]`` (only the entropy form needs
        the probabilities, so only it forms them)."""
        if self.form == "constant":
            return torch.full(logits.shape[:-1], self.tau, device=logits.device)
        return self.beta - self.alpha * entropy(torch.softmax(logits.float(), dim=-1))

    def acceptable(
        self,
        tree: DraftTree,
        logits: torch.Tensor,
        eos_ids: frozenset[int],
        parent_rows: list[int] | None = None,
    ) -> list[bool]:
        """Whether each draft node passes the rule at its parent's distribution.

        ``logits`` holds a row per tree row, or only the rows named by ``parent_rows`` (the
        index of each node's parent in ``logits``). Each parent row costs one pass
        (:func:`top_probs` with k = 1: its argmax and that argmax's probability ``p_max``, by
        alignspec's CPU kernel where it is loaded); a node's probability is then
        ``exp(l_x - l_max) * p_max``, and ``p(x) > p(EOS)`` is ``l_x > l_EOS``. No ``[n, V]``
        softmax (except for the entropy threshold) or logsumexp is formed: those and a dozen
        small torch ops cost ~0.3 ms a round. Where alignspec's CPU kernel is loaded (an int8
        model), the constant rule runs there in one call (``conditional_ok``: 188 -> 108 us a
        call on a 2-core EPYC, right after the forward); the tests hold both to the same decisions.
        """
        if not len(tree):
            return []
        logits = logits.float()
        parents = tree.parents if parent_rows is None else parent_rows
        kernel = cpu_kernel.loaded()
        if kernel is not None and self.form == "constant" and logits.device.type == "cpu":
            return kernel.conditional_ok(logits, parents, tree.tokens, sorted(eos_ids), self.tau)
        top_ids, top_p = top_probs(logits, 1)
        where = torch.tensor([parents, tree.tokens], device=logits.device)
        l_x = logits[where[0], where[1]].cpu().numpy()
        l_max = logits.gather(1, top_ids).cpu().numpy()[:, 0]
        p_max = top_p.float().cpu().numpy()[:, 0]
        par = np.asarray(parents)
        if self.form == "constant":
            tau = np.minimum(np.float32(self.tau), p_max)
        else:
            tau = np.minimum(self.thresholds(logits).cpu().numpy(), p_max)
        p_x = np.exp(l_x - l_max[par]) * p_max[par]
        ok = p_x >= tau[par]
        if eos_ids:
            l_eos = logits[:, sorted(eos_ids)].amax(dim=-1).cpu().numpy()
            ok &= l_x > l_eos[par]
        ok |= l_x == l_max[par]  # an argmax (any of tied ones) always passes
        return ok.tolist()

    def verify(
        self, tree: DraftTree, logits: RowLogits | torch.Tensor, ctx: VerifyContext
    ) -> VerifyResult:
        logits = RowLogits.wrap(logits)
        # every parent row is needed to judge its children; leaves only for the bonus
        internal = sorted({0, *tree.parents})
        where = {row: k for k, row in enumerate(internal)}
        ok = self.acceptable(
            tree, logits.rows(internal), ctx.eos_ids, [where[p] for p in tree.parents]
        )
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
        tokens.append(logits.argmax(best[-1]))
        return VerifyResult(rows=best, tokens=tokens)
