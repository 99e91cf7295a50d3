"""Verify-time attention: the int8 model's exact attention gives a row the same bits whether
its keys sit contiguously (decoding alone) or scattered among masked draft siblings (a tree).
Plain fp32 attention does not (on the Xeon this was written on, the same row differed in its
last bits), which made int8 speculation diverge from int8 ``ar``."""

from __future__ import annotations

import torch

from alignspec.targets.native.attention import attend, attend_exact, build_mask

KV_HEADS, HEADS, DIM, PREFIX = 3, 9, 64, 300


def layouts(values_dtype: torch.dtype):
    """The same query and visible keys twice: decoded alone, and as row 7 of an 8-row tree
    whose path sits at tree slots 0, 2, 5, 7 (the other slots hold masked siblings)."""
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(KV_HEADS, PREFIX + 8, DIM, generator=gen)
    values = torch.randn(KV_HEADS, PREFIX + 8, DIM, generator=gen)
    q = torch.randn(8, HEADS, DIM, generator=gen)
    path = [PREFIX + s for s in (0, 2, 5, 7)]
    visible = list(range(PREFIX)) + path
    alone = (q[7:], keys[:, visible], values[:, visible].to(values_dtype), None)
    allowed = torch.zeros(8, PREFIX + 8, dtype=torch.bool)
    allowed[:, :PREFIX] = True
    for row in range(8):
        allowed[row, PREFIX + row] = True
    allowed[7, path] = True
    mask = build_mask(allowed, torch.float32, q.device)
    tree = (q, keys, values.to(values_dtype), mask)
    return alone, tree


def test_exact_attention_ignores_the_slot_layout():
    alone, tree = layouts(torch.float64)
    got_alone = attend_exact(*alone, DIM**-0.5)[0]
    got_tree = attend_exact(*tree, DIM**-0.5)[7]
    assert got_alone.dtype == torch.float32
    assert torch.equal(got_alone, got_tree)


def test_exact_attention_matches_plain_attention():
    _, tree = layouts(torch.float64)
    q, keys, values, mask = tree
    exact = attend_exact(q, keys, values, mask, DIM**-0.5)
    plain = attend(q, keys, values.float(), mask, DIM**-0.5)
    torch.testing.assert_close(exact, plain, atol=1e-5, rtol=1e-5)


def test_tree_mask_is_the_mask_of_the_allowed_slots():
    """The verify's one-pass mask equals build_mask of the slots each row may see (the prefix
    and its ancestors) bit for bit, in every dtype a native model runs in."""
    import random

    from alignspec.targets.native.attention import tree_mask
    from alignspec.tree import DraftTree

    rng = random.Random(0)
    for nodes in (1, 2, 7, 20):
        parents = [rng.randrange(0, i + 1) for i in range(nodes)]
        tree = DraftTree(tokens=list(range(nodes)), parents=parents)
        for prefix in (0, 5, 130):
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                ancestors = tree.ancestor_mask()
                allowed = torch.ones(nodes + 1, prefix + nodes + 1, dtype=torch.bool)
                allowed[:, prefix:] = ancestors
                want = build_mask(allowed, dtype, torch.device("cpu"))
                got = tree_mask(prefix, ancestors, dtype, torch.device("cpu"))
                assert got.dtype == dtype and torch.equal(got, want)
