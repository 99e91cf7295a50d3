"""The int8 copy of a feature head: close to the fp32 head, the fp32 head left as it was, and
drafting with it stays lossless (greedy identical to ``ar``, int8 and fp32 targets)."""

from __future__ import annotations

import pytest
import torch

from alignspec.api import LLM
from alignspec.heads.quantized import FrozenLinear, quantize_head
from tests.bench.conftest import make_tiny_tokenizer
from tests.conftest import make_tiny_llama
from tests.drafters.test_feature_head import PROMPTS, random_head_file
from tests.heads.test_modules import make_head, pairs


@pytest.fixture(scope="module")
def target_config():
    return make_tiny_llama().config


@pytest.mark.parametrize("arch", ["eagle2", "fspad"])
def test_int8_copy_tracks_the_fp32_head_and_leaves_it_alone(target_config, arch):
    head = make_head(target_config, arch)
    head.set_draft_vocab(torch.tensor([3, 9, 27, 81, 5]))
    before = {k: v.clone() for k, v in head.state_dict().items()}
    lm = torch.randn(96, head.cfg.hidden_size)
    q = quantize_head(head, lm)
    assert isinstance(q.fc, FrozenLinear) and isinstance(head.fc, torch.nn.Linear)
    for k, v in head.state_dict().items():
        assert torch.equal(v, before[k]), k
    e, f, pos = pairs(6)
    with torch.inference_mode():
        ref_p, ref_r = head(e, f, pos)
        got_p, got_r = q(e, f, pos)
        ref_l = head.draft_logits(ref_p[0], lm)
        got_l = q.draft_logits(ref_p[0], lm)
    for ref, got in ((ref_p, got_p), (ref_r, got_r), (ref_l, got_l)):
        err = (got - ref).norm() / ref.norm()
        assert err < 0.05, float(err)
    assert got_l.shape == (6, 5) and got_l.dtype == torch.float32
    assert q.to_token_ids(torch.tensor([1, 4])).tolist() == [9, 5]


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_int8_head_drafts_losslessly(quantize, tmp_path, single_thread):
    llm = LLM(make_tiny_llama(), make_tiny_tokenizer(), quantize=quantize)
    head = random_head_file(llm.model.config, "fspad", tmp_path)
    for prompt in PROMPTS[:2]:
        ref = llm.generate(prompt, method="ar", max_new_tokens=30)
        for precision in ("auto", "int8"):
            out = llm.generate(
                prompt, method="fspad", max_new_tokens=30, head=head, precision=precision
            )
            assert out.token_ids == ref.token_ids, (quantize, precision, prompt)
    int8 = llm.load_feature_head(head, int8=True)
    assert isinstance(int8.fc, FrozenLinear)
    assert llm.load_feature_head(head, int8=True) is int8
    assert isinstance(llm.load_feature_head(head).fc, torch.nn.Linear)


@pytest.mark.parametrize("arch", ["eagle2", "fspad"])
def test_kernel_layer_matches_the_torch_int8_layer(target_config, arch):
    """The kernel path (fused products, rope_attend over its own cache) computes what the
    int8 copy computes through torch: a causal absorb, then a masked tree step, then a crop."""
    from alignspec.heads.fast import KernelHeadCache
    from alignspec.heads.modules import HeadCache

    head = make_head(target_config, arch)
    q = quantize_head(head, torch.randn(96, head.cfg.hidden_size))
    if q.fast is None:
        pytest.skip("alignspec's CPU kernel is not built here")
    assert isinstance(q.new_cache(), KernelHeadCache)
    e, f, pos = pairs(9)
    e, f = e[:1], f[:1]
    tree = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0, 1, 0],
                         [1, 1, 1, 1, 1, 1, 1, 0, 1]], dtype=torch.bool)[None, None]  # fmt: skip
    outs = {}
    for name, cache in (("torch", HeadCache()), ("kernel", q.new_cache())):
        with torch.inference_mode():
            a = q(e[:, :6], f[:, :6], pos[:6], cache=cache)
            b = q(e[:, 6:], f[:, 6:], torch.full((3,), 6), mask=tree, cache=cache)
            cache.crop(6)
            c = q(e[:, 6:7], f[:, 6:7], torch.tensor([6]), cache=cache)
        assert cache.length == 7
        outs[name] = [*a, *b, *c]
    for ref, got in zip(outs["torch"], outs["kernel"], strict=True):
        err = (got - ref).norm() / ref.norm()
        assert err < 0.02, float(err)
