"""Head modules on a tiny random config: shapes of both architectures, cached and tree-masked
forwards equal to the plain causal forward, the draft vocabulary, and that training moves."""

from __future__ import annotations

import pytest
import torch

from alignspec.heads.config import HeadConfig
from alignspec.heads.modules import FeatureHead, HeadCache
from tests.conftest import make_tiny_llama

H = 64


@pytest.fixture(scope="module")
def target_config():
    return make_tiny_llama().config


def make_head(target_config, arch: str, seed: int = 0) -> FeatureHead:
    torch.manual_seed(seed)
    return FeatureHead(HeadConfig.for_target(target_config, arch)).eval()


def pairs(t: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, t, H, generator=g), torch.randn(2, t, H, generator=g), torch.arange(t)


@pytest.mark.parametrize("arch", ["eagle2", "fspad"])
def test_shapes_and_split(target_config, arch):
    head = make_head(target_config, arch)
    e, f, pos = pairs(7)
    predict, regress = head(e, f, pos)
    assert predict.shape == regress.shape == (2, 7, H)
    if arch == "eagle2":
        assert predict is regress
    else:  # partial alignment distillation: two different halves, down-projection emits 2H
        assert head.down_proj.out_features == 2 * H
        assert not torch.allclose(predict, regress)
        assert hasattr(head, "fs_gate") and head.fs_up.out_features == head.cfg.fs_intermediate_size


def test_feature_sampling_is_gated_by_the_token_embedding(target_config):
    """Same fused feature, different raw embedding -> the fspad gate changes the result."""
    head = make_head(target_config, "fspad")
    e, f, pos = pairs(3)
    with torch.no_grad():
        head.fc.weight[:, :H] = 0  # fc ignores the embedding: only the gate can see it
        a, _ = head(e, f, pos)
        b, _ = head(e + 1.0, f, pos)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("arch", ["eagle2", "fspad"])
def test_cached_steps_equal_the_causal_forward(target_config, arch):
    head = make_head(target_config, arch)
    e, f, pos = pairs(9)
    e, f = e[:1], f[:1]
    full, _ = head(e, f, pos)
    cache = HeadCache()
    parts = [
        head(e[:, a:b], f[:, a:b], pos[a:b], cache=cache)[0] for a, b in ((0, 4), (4, 5), (5, 9))
    ]
    assert cache.length == 9
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    cache.crop(5)
    assert cache.length == 5


def test_tree_mask_sees_only_ancestors(target_config):
    """A tree row equals the causal forward of its own path, whatever its siblings are."""
    head = make_head(target_config, "fspad")
    e, f, pos = pairs(6)
    e, f = e[:1], f[:1]
    cache = HeadCache()
    head(e[:, :4], f[:, :4], pos[:4], cache=cache)
    # two sibling rows at position 4 (the real pair and a decoy), each seeing the prefix + itself
    sib_e = torch.cat([e[:, 4:5], torch.randn(1, 1, H)], dim=1)
    sib_f = torch.cat([f[:, 4:5], torch.randn(1, 1, H)], dim=1)
    mask = torch.zeros(1, 1, 2, 6, dtype=torch.bool)
    mask[..., :4] = True
    mask[0, 0, 0, 4] = mask[0, 0, 1, 5] = True
    out, _ = head(sib_e, sib_f, torch.tensor([4, 4]), mask=mask, cache=cache)
    ref, _ = head(e[:, :5], f[:, :5], pos[:5])
    torch.testing.assert_close(out[:, 0], ref[:, 4], atol=1e-5, rtol=1e-5)


def test_draft_vocab_restricts_logits_and_maps_ids(target_config):
    head = make_head(target_config, "eagle2")
    lm = torch.randn(96, H)
    x = torch.randn(3, H)
    full = head.draft_logits(x, lm)
    assert full.shape == (3, 96) and full.dtype == torch.float32
    ids = torch.tensor([5, 17, 40, 2])
    head.set_draft_vocab(ids)
    sub = head.draft_logits(x, lm)
    torch.testing.assert_close(sub, full[:, ids])
    assert head.to_token_ids(torch.tensor([1, 3])).tolist() == [17, 2]
    assert head.cfg.draft_vocab_size == 4


@pytest.mark.parametrize("arch", ["eagle2", "fspad"])
def test_a_few_steps_reduce_the_loss(target_config, arch):
    head = make_head(target_config, arch).train()
    e, f, pos = pairs(12)
    target = torch.randn(2, 12, H, generator=torch.Generator().manual_seed(3))
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        _, regress = head(e, f, pos)
        loss = torch.nn.functional.smooth_l1_loss(regress, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
