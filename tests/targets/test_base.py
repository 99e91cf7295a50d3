"""The two-pass top-k that AASD's alignment table reads: the same ids and probabilities as a
full softmax and ``topk``, wherever the top entries sit."""

from __future__ import annotations

import pytest
import torch

from alignspec.targets.base import TOP_BLOCK, top_probs


def _reference(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    probs, ids = torch.softmax(logits.float(), dim=-1).topk(k, dim=-1)
    return ids, probs


@pytest.mark.parametrize("vocab", [TOP_BLOCK * 384, TOP_BLOCK * 3, 1000])
def test_top_probs_matches_softmax_topk(vocab: int) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, vocab, generator=gen) * 4
    logits[1, :5] = 30.0 + torch.arange(5.0)  # the whole top-k inside one block
    logits[2, ::TOP_BLOCK] = 20.0 + torch.arange(len(range(0, vocab, TOP_BLOCK))) * 0.01
    logits[3, 7:] = float("-inf")  # a masked row, as a penalty or filter leaves it
    ids, probs = top_probs(logits, 4)
    ref_ids, ref_probs = _reference(logits, 4)
    assert torch.equal(ids, ref_ids)
    assert torch.allclose(probs, ref_probs, rtol=1e-5, atol=1e-7)
    assert ids.dtype == torch.long and probs.dtype == torch.float32
