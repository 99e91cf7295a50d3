"""The EAGLE-2 drafter with a random feature head on the tiny model: greedy output identical
to plain decoding, valid trees within budget, the head cache holding exactly the committed
pairs, sampling through the lossless verifier, and the shipped-head errors; plus one check
on the real default model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alignspec.api import LLM
from alignspec.drafters.feature_head import FeatureHeadConfig, FeatureHeadDrafter
from alignspec.errors import AlignspecError
from alignspec.heads.config import HeadConfig
from alignspec.heads.io import save_head
from alignspec.heads.modules import FeatureHead
from alignspec.methods import get_method
from alignspec.sampling import SamplingParams
from alignspec.targets.base import PrefillOutput, VerifyOutput
from alignspec.verifiers.base import VerifyResult
from tests.bench.conftest import make_tiny_tokenizer
from tests.conftest import make_tiny_llama
from tests.stat_helpers import assert_matches
from tests.verifiers.test_lossless import VOCAB as SMALL_VOCAB
from tests.verifiers.test_lossless import engine_histogram, exact_joint

PROMPTS = ["the cat sat on the mat", "write a story about a dog", "big red blue cat ran", "i"]


@pytest.fixture(scope="module")
def tiny() -> LLM:
    return LLM(make_tiny_llama(), make_tiny_tokenizer())


def random_head_file(config, arch: str, folder: Path, seed: int = 1, vocab: list[int] = ()) -> str:
    torch.manual_seed(seed)
    head = FeatureHead(HeadConfig.for_target(config, arch))
    if vocab:
        head.set_draft_vocab(torch.tensor(vocab))
    return str(save_head(head, folder / f"{arch}-{seed}.safetensors"))


@pytest.mark.parametrize("arch", ["eagle2", "fspad"])
def test_greedy_output_is_identical_to_ar(tiny, arch, tmp_path, single_thread):
    head = random_head_file(tiny.model.config, arch, tmp_path)
    for prompt in PROMPTS:
        ref = tiny.generate(prompt, method="ar", max_new_tokens=40)
        for opts in ({}, {"tree_top_k": 2, "depth": 2, "total_tokens": 5}):
            out = tiny.generate(prompt, method=arch, max_new_tokens=40, head=head, **opts)
            assert out.token_ids == ref.token_ids, (arch, prompt, opts)


def test_trees_are_valid_and_the_head_cache_tracks_commits(tiny, tmp_path, single_thread):
    """Drafter-level loop: every tree is within budget with parents first, and after each
    round the head cache holds one entry per committed pair (everything but the root)."""
    head_path = random_head_file(tiny.model.config, "fspad", tmp_path, vocab=list(range(40)))
    cfg = FeatureHeadConfig(head=head_path, tree_top_k=3, depth=3, total_tokens=9)
    drafter = get_method("fspad").build_drafter(tiny, cfg)
    assert isinstance(drafter, FeatureHeadDrafter)
    original = drafter.propose
    seen = []

    def checked(tokens: list[int]):
        tree = original(tokens)
        assert drafter.cache.length == len(tokens) - 1  # pairs (t_{i+1}, f_i), root excluded
        assert 1 <= len(tree) <= cfg.total_tokens - 1
        assert all(p < i + 1 for i, p in enumerate(tree.parents))  # parent row precedes
        assert tree.max_depth() <= cfg.depth + 1
        assert all(t < 40 for t in tree.tokens)  # drafted only from the draft vocabulary
        seen.append(len(tree))
        return tree

    drafter.propose = checked  # type: ignore[method-assign]
    from alignspec.engine import Engine
    from alignspec.stats import GenerationStats
    from alignspec.verifiers.greedy import GreedyVerifier

    ids = tiny.encode(PROMPTS[0], max_new_tokens=30)
    engine = Engine(tiny.target, drafter, GreedyVerifier())
    out = [
        t
        for new in engine.generate(
            ids, max_new_tokens=30, eos_ids=frozenset(), stats=GenerationStats()
        )
        for t in new
    ]
    ref = tiny.generate(PROMPTS[0], method="ar", max_new_tokens=30, stop=()).token_ids
    assert out[: len(ref)] == ref and len(seen) > 3


@pytest.mark.parametrize("arch", ["eagle2", "fspad"])
def test_a_head_context_window_reads_only_the_prompt_tail(tiny, arch, tmp_path, single_thread):
    """With head_context=3 the head never sees the older prompt pairs: its cache holds the
    window plus the committed pairs, and the output is still plain decoding's."""
    head_path = random_head_file(tiny.model.config, arch, tmp_path)
    prompt = " ".join(PROMPTS)
    ref = tiny.generate(prompt, method="ar", max_new_tokens=30)
    out = tiny.generate(prompt, method=arch, max_new_tokens=30, head=head_path, head_context=3)
    assert out.token_ids == ref.token_ids
    cfg = FeatureHeadConfig(head=head_path, head_context=3)
    drafter = get_method(arch).build_drafter(tiny, cfg)
    ids = tiny.encode(prompt, max_new_tokens=30)
    drafter.begin(ids, tiny.target.prefill(ids, want_hidden=True))
    drafter.propose([*ids, 7])
    assert drafter.cache.length == 4  # the 3 newest prompt pairs and the root's pair
    assert drafter._offset == len(ids) - 1 - 3


@pytest.mark.parametrize("arch", ["eagle2", "fspad"])
def test_after_a_long_skip_the_head_reads_what_it_reads_after_a_prefill(
    tiny, arch, tmp_path, single_thread
):
    """Rounds the budget skipped pile up pairs; past head_context the head restarts from the
    newest ones, at their own positions: its root prediction is then the one a drafter begun
    on the whole text as a prompt makes."""
    head_path = random_head_file(tiny.model.config, arch, tmp_path)
    ids = tiny.encode(" ".join(PROMPTS), max_new_tokens=8)
    end, p = len(ids) - 1, 5
    hidden = tiny.target.prefill(ids[:end], want_hidden=True).hidden
    cfg = FeatureHeadConfig(head=head_path, head_context=3)
    skipped = get_method(arch).build_drafter(tiny, cfg)
    skipped.begin(ids[:p], PrefillOutput(logits=hidden[0], hidden=hidden[:p]))
    skipped.propose(ids[: p + 1])
    for i in range(p, end):  # one committed token per round, no drafting
        skipped.update(VerifyResult([0], [ids[i + 1]]), VerifyOutput(None, hidden[i : i + 1]))
    tree = skipped.propose(ids)
    fresh = get_method(arch).build_drafter(tiny, cfg)
    fresh.begin(ids[:end], PrefillOutput(logits=hidden[0], hidden=hidden))
    assert fresh.propose(ids).tokens == tree.tokens
    assert skipped._offset == fresh._offset == end - 1 - 3
    assert skipped.cache.length == fresh.cache.length == 4
    assert torch.equal(skipped._root_logp, fresh._root_logp)


@pytest.mark.parametrize("int8", [False, True])
def test_sampling_through_the_lossless_verifier_matches_plain_sampling(
    int8, tmp_path, single_thread
):
    """1,500 generations with a random fspad head drafting the tree: the first three tokens
    follow the exact plain-sampling distribution (the head changes speed, never outputs),
    with the fp32 head and with its int8 copy (the CPU kernels' layer where they build)."""
    model = make_tiny_llama(seed=0, vocab=SMALL_VOCAB, init=0.1)
    from tests.verifiers.test_lossless import logits_table

    sampling = SamplingParams(temperature=1.0, top_k=4, seed=3)
    path = random_head_file(model.config, "fspad", tmp_path)
    from alignspec.heads.io import load_head

    head = load_head(path)
    if int8:
        from alignspec.heads.quantized import quantize_head

        head = quantize_head(head, model.get_output_embeddings().weight)
    drafter = FeatureHeadDrafter(
        head,
        model.get_input_embeddings().weight,
        model.get_output_embeddings().weight,
        FeatureHeadConfig(tree_top_k=3, depth=2, total_tokens=6),
    )
    counts = engine_histogram(model, drafter, sampling, 1_500)
    assert_matches(counts, exact_joint(logits_table(model, 2), sampling), "fspad drafts")


def test_missing_shipped_head_and_wrong_arch_are_user_errors(tiny, tmp_path, monkeypatch):
    import alignspec.heads.io as io

    monkeypatch.setattr(io, "WEIGHTS_DIR", tmp_path / "none")
    with pytest.raises(AlignspecError, match="train-head --arch eagle2"):
        tiny.generate("hi", method="eagle2", max_new_tokens=4)
    fspad = random_head_file(tiny.model.config, "fspad", tmp_path)
    with pytest.raises(AlignspecError, match="holds a fspad head"):
        tiny.generate("hi", method="eagle2", max_new_tokens=4, head=fspad)


@pytest.mark.real
def test_random_head_on_the_real_model_is_lossless(real_llm, spec_bench_rows, tmp_path):
    head = random_head_file(real_llm.model.config, "eagle2", tmp_path, vocab=list(range(8192)))
    for row in spec_bench_rows[:: len(spec_bench_rows) // 2][:2]:
        prompt = row["turns"][0]
        ref = real_llm.generate(prompt, method="ar", max_new_tokens=24, truncate="middle")
        out = real_llm.generate(
            prompt, method="eagle2", max_new_tokens=24, truncate="middle", head=head
        )
        assert out.token_ids == ref.token_ids
