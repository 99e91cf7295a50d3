import torch

from alignspec.tree import DraftTree
from alignspec.verifiers.base import VerifyContext
from alignspec.verifiers.greedy import GreedyVerifier


def logits_with_argmax(choices: list[int], vocab: int = 16) -> torch.Tensor:
    out = torch.zeros(len(choices), vocab)
    for row, tok in enumerate(choices):
        out[row, tok] = 5.0
    return out


def test_accepts_second_branch_and_adds_bonus():
    # root -> 3 -> 4 ; root -> 5 -> 6 -> 7
    tree = DraftTree(tokens=[3, 4, 5, 6, 7], parents=[0, 1, 0, 3, 4])
    # rows: 0 root, 1 (3), 2 (4), 3 (5), 4 (6), 5 (7)
    choices = [5, 0, 0, 6, 9, 0]  # root picks 5, row 3 picks 6, row 4 picks 9 (not 7)
    res = GreedyVerifier().verify(tree, logits_with_argmax(choices), VerifyContext([]))
    assert res.rows == [0, 3, 4]
    assert res.tokens == [5, 6, 9]
    assert res.accepted == 2


def test_rejects_everything_gives_bonus_only():
    tree = DraftTree.chain([3, 4])
    res = GreedyVerifier().verify(tree, logits_with_argmax([8, 0, 0]), VerifyContext([]))
    assert res.rows == [0] and res.tokens == [8]


def test_full_chain_accepted_bonus_from_leaf():
    tree = DraftTree.chain([3, 4])
    res = GreedyVerifier().verify(tree, logits_with_argmax([3, 4, 11]), VerifyContext([]))
    assert res.rows == [0, 1, 2] and res.tokens == [3, 4, 11]
