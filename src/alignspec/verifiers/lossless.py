"""Lossless speculative sampling over a draft tree: outputs are distributed as plain sampling's.

One recursive rule covers every drafter. At a node whose target distribution is ``p`` (after
repetition penalty, temperature, top-k and top-p), its children are tried in order; child ``x``
drawn from ``q`` is accepted with probability ``min(1, p(x) / q(x))``, and on rejection the
target becomes the residual ``p <- normalise(max(0, p - q))`` for the next sibling. If no child
is accepted the bonus token is sampled from that residual; if a child is accepted the walk goes
on from it with the child's own ``p``, and the bonus at a leaf is sampled from the leaf's ``p``.

- **Point-mass drafts** (``DraftTree.draft_probs is None``: prompt lookup, AASD, EAGLE nodes
  taken as certain) are the case ``q = one-hot(x)``: accept with probability ``p(x)``, on
  rejection set ``p(x) = 0`` and renormalise. For a chain this is "sample t ~ p, accept iff
  t == draft" (EAGLE's ``evaluate_posterior`` uses the same rule for its tree).
- **Draft-model drafts**: ``draft_probs[i]`` is the distribution node ``i + 1``'s token was
  drawn from, given its parent *and its earlier siblings*. For a chain that is the draft
  model's ``q`` (Leviathan et al., Chen et al.). Siblings drawn independently from one ``q``
  all carry that ``q`` (SpecInfer's multi-step speculative sampling); siblings drawn without
  replacement carry ``q`` with the earlier draws removed and renormalised (recursive rejection
  sampling, Jeon et al. 2024). :func:`draw_siblings` produces both.

Why it is exact, by induction over the siblings: given the history of earlier (rejected)
siblings, sibling k is an ordinary speculative-sampling step of target ``p_k`` with proposal
``q_k``, whose output is ``min(p_k, q_k)`` plus the rejection mass times ``p_{k+1} =
normalise(max(0, p_k - q_k))``; ``p_{k+1}`` does not depend on the rejected token itself, so
the mixture is ``p_k`` exactly. Deterministic top-k siblings were not *drawn* from ``q``; a
drafter must leave their ``draft_probs`` unset (point masses) or the rule is no longer exact.

At temperature 0 the verifier is greedy exact verification, so the outputs are identical.
"""

from __future__ import annotations

import torch

from alignspec.rows import RowLogits
from alignspec.tree import DraftTree
from alignspec.verifiers.base import Verifier, VerifyContext, VerifyResult
from alignspec.verifiers.greedy import walk_argmax


class LosslessVerifier(Verifier):
    """Speculative sampling (T > 0) for chains and trees; greedy exact at T = 0."""

    name = "lossless"
    lossless = True
    samples = True

    def verify(
        self, tree: DraftTree, logits: RowLogits | torch.Tensor, ctx: VerifyContext
    ) -> VerifyResult:
        sampling = ctx.sampling
        logits = RowLogits.wrap(logits)
        if sampling.greedy:
            return walk_argmax(tree, logits)
        vocab = int(logits.row(0).shape[-1])
        q_rows = tree.draft_probs
        if q_rows is not None:
            if tuple(q_rows.shape) != (len(tree), vocab):
                raise ValueError(
                    f"draft_probs has shape {tuple(q_rows.shape)}, expected "
                    f"({len(tree)}, {vocab}): one target-vocabulary row per node"
                )
            q_rows = q_rows.to(device=logits.device, dtype=torch.float32)
        children = tree.children()
        # one uniform per node (each is tested at most once) and one for the bonus, at once
        uniforms = torch.rand(
            len(tree) + 1, generator=ctx.generator, dtype=torch.float64, device=logits.device
        ).tolist()
        # q(x) of every node in one fetch; p only for the rows the walk reaches (a walk visits
        # a path, so warping every row of a 60-node tree over a 49k vocabulary would be waste)
        q_of_token = q_rows[range(len(tree)), tree.tokens].tolist() if q_rows is not None else None
        row, rows, tokens = 0, [0], []
        p = sampling.probs(logits.rows([0]))[0]
        while True:
            accepted = None
            for child in children[row]:
                tok = tree.tokens[child - 1]
                qx = None if q_of_token is None else q_of_token[child - 1]
                if self.accepts(float(p[tok]), qx, uniforms[child - 1]):
                    accepted = child
                    break
                p = self.residual(p, None if q_rows is None else q_rows[child - 1], tok)
            if accepted is None:
                break
            rows.append(accepted)
            tokens.append(tree.tokens[accepted - 1])
            row = accepted
            p = sampling.probs(logits.rows([row]))[0]
        tokens.append(sampling.sample(p, ctx.generator, uniforms[-1]))
        return VerifyResult(rows=rows, tokens=tokens)

    # The two steps of the rule, separate so tests can break each one on purpose and check
    # that the statistical tests notice.
    @staticmethod
    def accepts(px: float, qx: float | None, u: float) -> bool:
        """Accept with probability ``min(1, p(x) / q(x))`` (``qx = None``: a point mass, q = 1).

        Written as ``u * q < p`` so ``q(x) = 0`` (a token the drafter could not have drawn)
        needs no division; it is accepted iff the target allows it.
        """
        if qx is None:
            return u < px
        return u * qx < px

    @staticmethod
    def residual(p: torch.Tensor, q: torch.Tensor | None, tok: int) -> torch.Tensor:
        """The target after rejecting ``tok``: ``normalise(max(0, p - q))``.

        If nothing is left (``p <= q`` everywhere up to rounding, so the rejection had
        probability ~0), ``p`` is kept: any token drawn from it is then correct.
        """
        if q is None:
            rest = p.clone()
            rest[tok] = 0.0
        else:
            rest = (p - q).clamp_min(0.0)
        total = float(rest.sum())
        if total <= 0.0:
            return p
        return rest / total


def draw_siblings(
    q: torch.Tensor, k: int, generator: torch.Generator | None, *, replacement: bool
) -> tuple[list[int], torch.Tensor]:
    """Draw ``k`` sibling drafts from ``q`` (``[V]``) with the rows the verifier needs.

    Returns the tokens and one ``draft_probs`` row per token: ``q`` itself for independent
    draws (``replacement=True``, SpecInfer), or ``q`` with the earlier draws removed and
    renormalised (``replacement=False``; fewer than ``k`` tokens when ``q`` has less support).
    Draws without replacement use the Gumbel-top-k trick: the order of the ``k`` largest
    ``log q + Gumbel`` keys is distributed exactly as ``k`` sequential draws without replacement,
    at the cost of one ``topk`` instead of ``k`` renormalise-and-draw steps.
    """
    q = q.float()
    q = q / q.sum()
    if replacement:
        cdf = q.double().cumsum(-1)
        u = torch.rand(k, generator=generator, dtype=torch.float64, device=q.device)
        picks = torch.searchsorted(cdf, u * cdf[-1], right=True)
        last = int(torch.nonzero(q > 0)[-1])  # u * total rounded up to the total
        tokens = picks.clamp_max(last).tolist()
        return tokens, q.expand(k, -1).clone()
    u = torch.rand(q.shape[-1], generator=generator, dtype=torch.float64, device=q.device)
    keys = q.double().log() - (-u.log()).log()
    top = keys.topk(min(k, int((q > 0).sum()))).indices.tolist()
    rows = q.expand(len(top), -1).clone()
    for j in range(1, len(top)):
        rows[j:, top[j - 1]] = 0.0  # sibling j was drawn with the earlier ones removed
    return top, rows / rows.sum(-1, keepdim=True)
