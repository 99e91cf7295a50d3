"""Training-time test: the unrolled training forward gives every position exactly what the
EAGLE-2 drafter gives its chain of draft nodes (same inputs, positions, mask, hence the same
features and logits at every step), the mask's shape, and that one step is teacher forcing."""

from __future__ import annotations

import pytest
import torch

from alignspec.drafters.feature_head import FeatureHeadConfig, FeatureHeadDrafter
from alignspec.heads.config import HeadConfig
from alignspec.heads.modules import FeatureHead
from alignspec.targets.select import make_target
from alignspec.training.unroll import step_mask, unrolled_forward, valid_rows
from tests.conftest import make_tiny_llama

PROMPT = [1, 17, 40, 5, 33, 8, 61, 12, 9, 70, 4]


def test_step_mask_sees_the_committed_prefix_the_ancestors_and_itself() -> None:
    mask = step_mask(3, 5)[0, 0].int()
    # row i at step 3: step-1 keys < i - 1, the step-2 key at i - 1, the step-3 key at i
    expected = torch.tensor(
        [
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0],
            [1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0],
            [1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0],
            [1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
        ]
    )
    assert torch.equal(mask, expected)
    assert torch.equal(step_mask(1, 4)[0, 0], torch.ones(4, 4, dtype=torch.bool).tril())
    assert valid_rows(3, 5).tolist() == [False, False, True, True, True]


@pytest.mark.parametrize("arch", ["eagle2", "fspad"])
def test_one_step_is_the_plain_teacher_forced_forward(arch: str) -> None:
    torch.manual_seed(0)
    head = FeatureHead(HeadConfig.for_target(make_tiny_llama().config, arch)).eval()
    e, f = torch.randn(2, 9, 64), torch.randn(2, 9, 64)
    pos = torch.arange(9).expand(2, 9)
    [(p1, r1)] = unrolled_forward(head, e, f, pos, 1)
    p0, r0 = head(e, f, pos)
    torch.testing.assert_close(p1, p0)
    torch.testing.assert_close(r1, r0)


@pytest.mark.parametrize("arch", ["eagle2", "fspad"])
def test_unroll_matches_the_drafters_own_chain(arch: str, single_thread: None) -> None:
    """Run the drafter with top_k = 1 (a chain of ``depth`` head steps after the committed
    pairs), record every head call, then unroll training on the same token sequence: step 1
    must equal the drafter's absorb of the committed pairs and step j + 1 the drafter's j-th
    expansion, feature for feature, at the same positions."""
    model = make_tiny_llama(seed=3, init=0.1)
    torch.manual_seed(7)
    head = FeatureHead(HeadConfig.for_target(model.config, arch)).eval()
    embed = model.get_input_embeddings().weight.detach()
    lm = model.get_output_embeddings().weight.detach()
    depth = 3
    cfg = FeatureHeadConfig(tree_top_k=1, depth=depth, total_tokens=depth + 3)
    drafter = FeatureHeadDrafter(head, embed, lm, cfg)
    target = make_target(model, "native")
    prefill = target.prefill(PROMPT, want_hidden=True)
    root = int(prefill.logits.argmax())
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = head.register_forward_hook(lambda _m, _i, out: calls.append(out))
    drafter.begin(PROMPT, prefill)
    tree = drafter.propose([*PROMPT, root])
    hook.remove()
    assert len(calls) == 1 + depth and len(tree.tokens) == depth + 1
    assert tree.parents == list(range(depth + 1))  # a chain

    n = len(PROMPT)  # committed pairs (t_{i+1}, f_i), i < n
    ids = torch.tensor([*PROMPT, root, *tree.tokens[:depth]])
    t = len(ids) - 1
    feats = torch.randn(t, 64)  # positions >= n have no target feature: must not matter
    feats[:n] = prefill.hidden
    embeds = torch.nn.functional.embedding(ids[1:], embed)
    with torch.no_grad():
        steps = unrolled_forward(head, embeds[None], feats[None], torch.arange(t), depth + 1)

    absorb_predict, absorb_regress = calls[0]
    torch.testing.assert_close(steps[0][0][0, :n], absorb_predict[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(steps[0][1][0, :n], absorb_regress[0], atol=1e-5, rtol=1e-5)
    for s in range(depth):
        predict, regress = calls[1 + s]
        row = n + s  # the draft node s + 1 levels below the root sits at position n + s
        torch.testing.assert_close(steps[s + 1][0][0, row], predict[0, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(steps[s + 1][1][0, row], regress[0, 0], atol=1e-5, rtol=1e-5)
        logits = head.draft_logits(steps[s + 1][0][0, row : row + 1], lm)
        assert int(head.to_token_ids(logits.argmax(-1))) == tree.tokens[s + 1]
