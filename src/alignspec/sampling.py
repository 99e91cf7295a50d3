"""Sampling settings and the logits -> probabilities transform, identical to transformers'.

Lossless speculative sampling only preserves the output distribution if the target
distribution ``p`` it verifies against is exactly the one plain sampling draws from, so this
module reproduces transformers' processors bit for bit, in ``generate``'s order:
``RepetitionPenaltyLogitsProcessor`` (over every token the position conditions on), then the
warpers ``TemperatureLogitsWarper``, ``TopKLogitsWarper`` and ``TopPLogitsWarper``.

The repetition penalty depends on the context, which differs per row of a draft tree: row ``r``
conditions on the committed tokens *plus* the draft tokens on the path root -> r, so
:meth:`SamplingParams.penalize` builds one "seen" mask per row. The engine applies it before any
verifier runs (so greedy, lossless and conditional verification all see what plain decoding
would see); temperature, top-k and top-p are the verifier's business (:meth:`SamplingParams.probs`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from alignspec.errors import AlignspecError
from alignspec.tree import DraftTree


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token.

    ``temperature == 0`` is greedy decoding (top-k and top-p are then ignored, as in
    transformers with ``do_sample=False``); the repetition penalty applies in both modes.
    ``top_k == 0`` and ``top_p == 1`` switch those filters off. ``seed`` makes sampled runs
    reproducible with a dedicated ``torch.Generator``; without it, torch's global generator is
    used, so ``torch.manual_seed`` controls the run as it does for transformers.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        t, k, p, r = self.temperature, self.top_k, self.top_p, self.repetition_penalty
        if not _is_real(t) or not t >= 0 or math.isinf(t):
            raise AlignspecError(f"temperature must be a finite number >= 0, got {t!r}")
        if not _is_int(k) or k < 0:
            raise AlignspecError(f"top_k must be an integer >= 0 (0 switches it off), got {k!r}")
        if not _is_real(p) or not 0 < p <= 1:
            raise AlignspecError(f"top_p must be in (0, 1] (1 switches it off), got {p!r}")
        if not _is_real(r) or not r > 0 or math.isinf(r):
            raise AlignspecError(f"repetition_penalty must be a finite number > 0, got {r!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**63):
            raise AlignspecError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")

    # ------------------------------------------------------------------ properties
    @property
    def greedy(self) -> bool:
        """Whether this is greedy decoding (temperature 0)."""
        return self.temperature == 0

    def make_generator(self, device: torch.device | str = "cpu") -> torch.Generator | None:
        """A generator seeded from ``seed`` on ``device``; ``None`` (torch's global one) without.

        Greedy decoding draws no random numbers, so it gets ``None`` too.
        """
        if self.seed is None or self.greedy:
            return None
        gen = torch.Generator(device=device)
        gen.manual_seed(int(self.seed))
        return gen

    # ------------------------------------------------------------------ transforms
    def penalize(
        self, logits: torch.Tensor, committed: Sequence[int], tree: DraftTree | None = None
    ) -> torch.Tensor:
        """Apply the repetition penalty to ``logits`` (``[rows, V]``), row by row.

        Row 0 conditions on ``committed`` (prompt + generated, the root last); with a ``tree``,
        row ``r`` also conditions on the draft tokens on the path root -> r, exactly what plain
        decoding would have seen there. A penalty of 1 returns ``logits`` unchanged.
        """
        if self.repetition_penalty == 1.0:
            return logits
        seen = seen_mask(committed, tree, logits.shape[-1], logits.device)
        if seen.shape[0] != logits.shape[0]:
            raise ValueError(f"{logits.shape[0]} logits rows for a tree of {seen.shape[0]} rows")
        return apply_repetition_penalty(logits, seen, self.repetition_penalty)

    def row_penalty(
        self, committed: Sequence[int], tree: DraftTree | None, vocab: int, device: torch.device
    ) -> Callable[[torch.Tensor, list[int]], torch.Tensor] | None:
        """:meth:`penalize` for rows computed one group at a time (the lazy LM head).

        ``None`` when there is no penalty. The seen-token mask is built once, on first use.
        """
        if self.repetition_penalty == 1.0:
            return None
        committed = list(committed)  # the caller appends to its list after verifying
        seen: list[torch.Tensor] = []

        def apply(logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
            if not seen:
                seen.append(seen_mask(committed, tree, vocab, device))
            return apply_repetition_penalty(logits, seen[0][rows], self.repetition_penalty)

        return apply

    def warp(self, logits: torch.Tensor) -> torch.Tensor:
        """Temperature, then top-k, then top-p on ``[..., V]`` logits (filtered -> ``-inf``).

        Only meaningful for ``temperature > 0``; each step is skipped at its neutral value,
        as transformers skips the corresponding warper.
        """
        scores = logits
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if self.top_k != 0:
            scores = top_k_filter(scores, self.top_k)
        if self.top_p < 1.0:
            scores = top_p_filter(scores, self.top_p)
        return scores

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The next-token distribution per row of (already penalised) ``logits``.

        Softmax of :meth:`warp` when sampling; at temperature 0 a one-hot at the argmax, which
        is the distribution greedy decoding draws from.
        """
        if self.greedy:
            out = torch.zeros_like(logits, dtype=torch.float32)
            return out.scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
        return torch.softmax(self.warp(logits.float()), dim=-1)

    def distribution(
        self, logits: torch.Tensor, committed: Sequence[int], tree: DraftTree | None = None
    ) -> torch.Tensor:
        """The full transform: :meth:`penalize` then :meth:`probs`."""
        return self.probs(self.penalize(logits, committed, tree))

    def sample(
        self, probs: torch.Tensor, generator: torch.Generator | None, u: float | None = None
    ) -> int:
        """Draw one token from a (possibly unnormalised) distribution ``[V]``.

        ``u`` is a uniform in [0, 1) the caller already drew from ``generator`` (verifiers draw
        all of a round's uniforms at once); without it one is drawn here.
        """
        return sample_index(probs, generator, u)


# ---------------------------------------------------------------------- building blocks
def seen_mask(
    committed: Sequence[int],
    tree: DraftTree | None,
    vocab: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Boolean ``[rows, vocab]``: which tokens each row's context contains.

    Ids outside the vocabulary (an embedding larger than the LM head) are ignored, as
    transformers ignores them: such tokens can never be generated, so nothing is penalised.
    """
    base = torch.zeros(vocab + 1, dtype=torch.bool, device=device)
    if len(committed):
        ids = torch.as_tensor(list(committed), dtype=torch.long, device=device)
        base[ids.clamp(min=0, max=vocab)] = True
    base = base[:vocab]
    if tree is None or not len(tree):
        return base[None]
    rows = base.repeat(tree.num_rows, 1)
    for i, (tok, parent) in enumerate(zip(tree.tokens, tree.parents, strict=True), start=1):
        rows[i] = rows[parent]  # everything the parent's row conditions on...
        if 0 <= tok < vocab:
            rows[i, tok] = True  # ...plus this node's token, the input at row i
    return rows


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: float
) -> torch.Tensor:
    """CTRL's penalty as transformers applies it: divide positive, multiply negative logits."""
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


def top_k_filter(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` highest scores per row (ties with the k-th are kept), the rest ``-inf``."""
    k = min(k, scores.shape[-1])
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, -math.inf)


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest top set whose probability reaches ``top_p``.

    Walks the ascending sort like transformers does: a token is dropped while the mass at or
    below it is still <= 1 - top_p; the most likely token always survives.
    """
    ascending, order = torch.sort(scores, descending=False, dim=-1)
    mass_below = ascending.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = mass_below <= (1 - top_p)
    drop_sorted[..., -1:] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, -math.inf)


def sample_index(
    probs: torch.Tensor, generator: torch.Generator | None, u: float | None = None
) -> int:
    """Inverse-CDF draw from non-negative weights ``[V]`` (they need not sum to 1).

    One uniform ``u`` and a float64 cumulative sum: ``torch.multinomial`` costs ~3 ms per call
    on a 49k vocabulary on CPU, this ~0.15 ms. The draw is the number of cumulative weights
    ``<= u * total``, i.e. the first index whose cumulative weight exceeds it, which always has
    positive weight, so a token the filters removed is never drawn.
    """
    cdf = probs.cumsum(-1, dtype=torch.float64)
    if u is None:
        u = float(torch.rand(1, generator=generator, dtype=torch.float64, device=probs.device))
    index = int(torch.count_nonzero(cdf <= u * float(cdf[-1])))
    if index >= cdf.numel():  # u * total rounded up to the total: the last token with weight
        index = int(torch.nonzero(probs > 0)[-1])
    return index


def _is_real(value: object) -> bool:
    """A real number that is not NaN (``bool`` excluded: ``True`` is not a temperature)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
