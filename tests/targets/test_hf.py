"""Tree forward, position ids and KV compaction of the transformers target on a tiny Llama."""

import torch

from alignspec.targets.hf import HFTarget
from alignspec.tree import DraftTree


def full_logits(model, ids: list[int]) -> torch.Tensor:
    """Reference: one cache-free causal forward over the whole sequence."""
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].float()


PROMPT = [1, 5, 9, 17, 33, 40, 41, 7, 8, 9]
TREE = DraftTree(tokens=[11, 12, 13, 21, 22, 31], parents=[0, 1, 2, 0, 4, 1])


def test_prefill_logits_match_reference(tiny_llama):
    target = HFTarget(tiny_llama)
    out = target.prefill(PROMPT[:-1], topk=3, want_hidden=True)
    ref = full_logits(tiny_llama, PROMPT[:-1])
    assert torch.allclose(out.logits, ref[-1], atol=1e-4)
    assert out.topk_ids.shape == (len(PROMPT) - 1, 3)
    assert torch.equal(out.topk_ids, torch.softmax(ref, -1).topk(3, -1).indices)
    assert out.hidden.shape == (len(PROMPT) - 1, tiny_llama.config.hidden_size)
    assert target.cache_len == len(PROMPT) - 1


def test_tree_rows_match_each_branch_forward(tiny_llama):
    target = HFTarget(tiny_llama)
    target.prefill(PROMPT[:-1])
    out = target.verify(PROMPT[-1], TREE)
    assert out.logits.dense().shape == (TREE.num_rows, tiny_llama.config.vocab_size)
    for row in range(TREE.num_rows):
        path = TREE.path_to(row)
        seq = PROMPT + [TREE.tokens[r - 1] for r in path[1:]]
        ref = full_logits(tiny_llama, seq)[-1]
        assert torch.allclose(out.logits.dense()[row], ref, atol=1e-4), f"row {row}"


def test_commit_non_first_branch_compacts_cache(tiny_llama):
    target = HFTarget(tiny_llama)
    target.prefill(PROMPT[:-1])
    target.verify(PROMPT[-1], TREE)
    path = [0, 4, 5]  # root -> 21 -> 22: the second branch, not a prefix of the rows
    target.commit(path)
    assert target.cache_len == len(PROMPT) + 2
    # the next forward must see exactly PROMPT + [21, 22] as its past
    nxt = target.verify(50, DraftTree.chain([51]))
    ref = full_logits(tiny_llama, [*PROMPT, 21, 22, 50, 51])
    assert torch.allclose(nxt.logits.dense(), ref[-2:], atol=1e-4)


def test_commit_prefix_rows_is_a_crop(tiny_llama):
    target = HFTarget(tiny_llama)
    target.prefill(PROMPT[:-1])
    target.verify(PROMPT[-1], DraftTree.chain([11, 12, 13]))
    target.commit([0, 1])
    nxt = target.verify(60, DraftTree())
    ref = full_logits(tiny_llama, [*PROMPT, 11, 60])
    assert torch.allclose(nxt.logits.dense()[0], ref[-1], atol=1e-4)
