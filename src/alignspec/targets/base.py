"""The Target seam: what the engine needs from the model it accelerates.

A target owns its KV cache. The engine calls :meth:`Target.prefill` once, then per round
:meth:`Target.verify` (one forward over the root and every draft node, with a tree mask) and
:meth:`Target.commit` with the accepted rows, which keeps only those cache entries, contiguous.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch

from alignspec.rows import RowLogits
from alignspec.tree import DraftTree


@dataclass
class PrefillOutput:
    """What a prefill returns.

    ``logits`` is the next-token logits after the last prompt token (shape ``[V]``).
    ``topk_ids``/``topk_probs`` (shape ``[L, m]``) are the target's top-m next-token choices
    at every prompt position, kept only when a drafter asks for them (AASD's alignment
    table); the full ``L x V`` matrix is never kept. ``hidden`` holds the last hidden states
    (after the final norm) at every prompt position when asked for (feature drafters, AASD).
    ``topk_of(hidden_rows, k)`` runs the target's LM head over some of those rows later, so a
    drafter can ask for the top-k at the few positions it actually copies from (AASD's lazy
    alignment) instead of paying for every prompt position at prefill.
    """

    logits: torch.Tensor
    topk_ids: torch.Tensor | None = None
    topk_probs: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    topk_of: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]] | None = None


@dataclass
class VerifyOutput:
    """The tree rows' logits, computed as they are read (:class:`~alignspec.rows.RowLogits`,
    the lazy LM head), and, when asked, their last hidden states."""

    logits: RowLogits | torch.Tensor
    hidden: torch.Tensor | None = None


class Target(ABC):
    """A causal LM with a KV cache that can score draft trees in one forward."""

    device: torch.device
    vocab_size: int
    max_context: int
    #: the deepest a draft-tree row may sit (the engine cuts deeper drafts), None: no limit
    max_tree_depth: int | None = None

    @property
    @abstractmethod
    def cache_len(self) -> int:
        """Number of committed positions held in the KV cache."""

    @abstractmethod
    def reset(self) -> None:
        """Drop the KV cache (start of a new request)."""

    @abstractmethod
    def prefill(self, ids: list[int], *, topk: int = 0, want_hidden: bool = False) -> PrefillOutput:
        """Run the prompt through the model, filling the cache with every prompt position."""

    @abstractmethod
    def verify(self, root: int, tree: DraftTree, *, want_hidden: bool = False) -> VerifyOutput:
        """One forward over ``[root] + tree.tokens`` under the tree mask.

        The rows are appended to the cache provisionally; :meth:`commit` decides which stay.
        """

    @abstractmethod
    def commit(self, rows: list[int]) -> None:
        """Keep the cache entries of ``rows`` (of the last verify, increasing, root first)."""


#: vocabulary entries per block in :func:`top_probs`' first pass
TOP_BLOCK = 128


def top_probs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most likely ids of each row of ``logits`` ``[n, V]`` and their probabilities.

    ``torch.topk`` over a 49k vocabulary costs several softmaxes, so the search runs in two
    passes: the maximum of each block of :data:`TOP_BLOCK` entries (a contiguous reduction),
    then ``topk`` over the entries of the ``k`` blocks with the largest maxima, which must
    hold the top ``k``: a block without one of them has a maximum below each of them. Only
    the ``k`` probabilities are formed, as ``exp(logit - logsumexp)``. Ties at the ``k``-th
    value may resolve to another id of equal logit than plain ``topk`` picks.

    Where alignspec's CPU kernel is already loaded (an int8 model), its one-pass
    ``top_probs`` runs instead: AASD asks for a few rows every round.
    """
    logits = logits.float()
    from alignspec.targets.native import cpu_kernel  # not at the top: it imports this module

    kernel = cpu_kernel.loaded()
    if kernel is not None and logits.device.type == "cpu" and 0 < k <= logits.shape[-1]:
        ids, probs = kernel.top_probs(logits, k)  # one pass, about a quarter of the time
        return ids, probs
    n, vocab = logits.shape
    if vocab % TOP_BLOCK or k * TOP_BLOCK >= vocab:
        top, ids = logits.topk(k, dim=-1)
    else:
        blocks = logits.view(n, vocab // TOP_BLOCK, TOP_BLOCK)
        picked = blocks.amax(dim=-1).topk(k, dim=-1).indices  # [n, k]
        inside = blocks.gather(1, picked[:, :, None].expand(n, k, TOP_BLOCK)).view(n, -1)
        top, where = inside.topk(k, dim=-1)
        ids = picked.gather(1, where // TOP_BLOCK) * TOP_BLOCK + where % TOP_BLOCK
    # logsumexp from the maximum already found: one pass of exps, where torch.logsumexp's
    # own search for it made the call about 1.5x as slow
    best = top[:, :1]
    lse = best + (logits - best).exp_().sum(dim=-1, keepdim=True).log_()
    return ids, torch.exp(top - lse)


def topk_next_tokens(
    hidden: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor], k: int, rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` next-token ids and probabilities for every row of ``hidden`` (``[L, H]``).

    The LM head runs ``rows`` rows at a time, so only ``rows x V`` logits exist at once: a
    drafter that mines the prefill (AASD's alignment table) never costs ``L x V`` memory.
    """
    ids: list[torch.Tensor] = []
    probs: list[torch.Tensor] = []
    for chunk in hidden.split(rows):
        i, p = top_probs(head(chunk), k)
        probs.append(p)
        ids.append(i)
    return torch.cat(ids), torch.cat(probs)
