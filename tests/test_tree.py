import pytest
import torch

from alignspec.tree import DraftTree


def example_tree() -> DraftTree:
    # root -> 1(a) -> 2(b) -> 3(c); root -> 4(d) -> 5(e); 1 -> 6(f)
    return DraftTree(tokens=[10, 11, 12, 13, 14, 15], parents=[0, 1, 2, 0, 4, 1])


def test_depths_positions_children():
    t = example_tree()
    assert t.depths() == [0, 1, 2, 3, 1, 2, 2]
    assert t.position_ids(7).tolist() == [7, 8, 9, 10, 8, 9, 9]
    assert t.children() == [[1, 4], [2, 6], [3], [], [5], [], []]
    assert t.path_to(5) == [0, 4, 5]
    assert t.max_depth() == 3


def test_ancestor_mask_sees_only_ancestors_and_self():
    m = example_tree().ancestor_mask()
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 0, 0, 0, 1, 0, 0],
            [1, 0, 0, 0, 1, 1, 0],
            [1, 1, 0, 0, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(m, expected)


def test_chain_and_empty():
    c = DraftTree.chain([5, 6, 7])
    assert c.parents == [0, 1, 2]
    assert torch.equal(c.ancestor_mask(), torch.ones(4, 4, dtype=torch.bool).tril())
    e = DraftTree()
    assert len(e) == 0 and e.num_rows == 1 and e.depths() == [0]


def test_from_sequences_shares_prefixes_and_caps_nodes():
    t = DraftTree.from_sequences([[1, 2, 3], [1, 2, 4], [5]], max_nodes=10)
    assert t.tokens == [1, 2, 3, 4, 5]
    assert t.parents == [0, 1, 2, 2, 0]
    capped = DraftTree.from_sequences([[1, 2, 3], [1, 2, 4], [5]], max_nodes=3)
    assert capped.tokens == [1, 2, 3]


def test_truncated_keeps_shallow_nodes_and_reindexes():
    t = example_tree().truncated(1)
    assert t.tokens == [10, 13] and t.parents == [0, 0]
    t2 = example_tree().truncated(2)
    assert t2.tokens == [10, 11, 13, 14, 15]
    assert t2.parents == [0, 1, 0, 3, 1]


def test_parents_must_precede_children():
    with pytest.raises(ValueError):
        DraftTree(tokens=[1, 2], parents=[0, 2])
