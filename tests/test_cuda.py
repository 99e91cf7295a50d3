"""The engine, the native backend and the feature-head drafter on CUDA (marker ``cuda``).

Skipped without a GPU. On one they check that every path is device-clean (masks, positions,
indices and random generators built where the tensors they meet live) by running the real
code end to end on the tiny models, and that what CUDA computes is what the CPU computes:
lossless methods equal ``ar`` token for token, and the native forward matches transformers.
"""

from __future__ import annotations

import os

import pytest
import torch

from alignspec.api import LLM
from alignspec.drafters.base import NoDrafter
from alignspec.engine import Engine
from alignspec.sampling import SamplingParams
from alignspec.stats import GenerationStats
from alignspec.targets.hf import HFTarget
from alignspec.targets.native import NativeTarget
from alignspec.tree import DraftTree
from alignspec.verifiers.greedy import GreedyVerifier
from alignspec.verifiers.lossless import LosslessVerifier
from tests.bench.conftest import VOCAB, make_tiny_tokenizer
from tests.conftest import make_tiny_llama
from tests.drafters.test_feature_head import random_head_file
from tests.test_engine import PROMPT, OracleTreeDrafter, RandomDrafter

#: ``ALIGNSPEC_CUDA_TESTS_ON=cpu`` dry-runs these tests' own logic on a machine without a GPU
CUDA = torch.device(os.environ.get("ALIGNSPEC_CUDA_TESTS_ON", "cuda"))
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        CUDA.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU"
    ),
]


@pytest.fixture(scope="module")
def cuda_model():
    return make_tiny_llama().to(CUDA)


@pytest.fixture(scope="module")
def cuda_llm() -> LLM:
    return LLM(make_tiny_llama(vocab=VOCAB).to(CUDA), make_tiny_tokenizer())


def make_target(kind: str, model):
    return HFTarget(model) if kind == "hf" else NativeTarget.from_hf(model)


def run(target, drafter, verifier=None, sampling=None, max_new: int = 24) -> list[int]:
    engine = Engine(target, drafter, verifier or GreedyVerifier())
    out: list[int] = []
    for new in engine.generate(
        PROMPT,
        max_new_tokens=max_new,
        eos_ids=frozenset(),
        stats=GenerationStats(),
        sampling=sampling,
    ):
        out.extend(new)
    return out


@pytest.mark.parametrize("kind", ["native", "hf"])
def test_engine_trees_are_lossless_on_cuda(cuda_model, kind):
    target = make_target(kind, cuda_model)
    assert target.device.type == CUDA.type
    truth = run(target, NoDrafter())
    vocab = cuda_model.config.vocab_size
    assert run(target, OracleTreeDrafter(truth, len(PROMPT), vocab)) == truth
    for seed in range(3):
        assert run(target, RandomDrafter(vocab, seed)) == truth
        assert run(target, RandomDrafter(vocab, seed), LosslessVerifier()) == truth


@pytest.mark.parametrize("kind", ["native", "hf"])
def test_cuda_greedy_output_matches_the_cpu(kind):
    """The tiny model's distributions are peaked, so fp32 on either device picks the same."""
    cpu = run(make_target(kind, make_tiny_llama()), NoDrafter())
    gpu = run(make_target(kind, make_tiny_llama().to(CUDA)), NoDrafter())
    assert gpu == cpu


def test_seeded_sampling_on_cuda_is_reproducible(cuda_model):
    target = NativeTarget.from_hf(cuda_model)
    sampling = SamplingParams(temperature=0.9, top_k=20, top_p=0.9, seed=3)
    vocab = cuda_model.config.vocab_size
    a = run(target, RandomDrafter(vocab, 0), LosslessVerifier(), sampling)
    b = run(target, RandomDrafter(vocab, 1), LosslessVerifier(), sampling)
    assert len(a) == len(b) == 24
    assert a == run(target, RandomDrafter(vocab, 0), LosslessVerifier(), sampling)
    assert all(0 <= t < vocab for t in a + b)


def close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> None:
    """fp32: elementwise within 1e-4. bf16 keeps 3 significant digits and the two forwards sum
    in different orders (the native one takes its softmax in fp32): within 5% in norm."""
    if dtype == torch.float32:
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    else:
        assert float((a.float() - b.float()).norm() / b.float().norm()) < 5e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_forward_matches_transformers_on_cuda(dtype):
    model = make_tiny_llama().to(CUDA, dtype)
    native, hf = NativeTarget.from_hf(model), HFTarget(model)
    with torch.inference_mode():
        close(native.prefill(PROMPT).logits, hf.prefill(PROMPT).logits, dtype)
        tree = DraftTree(tokens=[5, 6, 7, 8], parents=[0, 1, 0, 3])
        a = native.verify(PROMPT[-1], tree, want_hidden=True)
        b = hf.verify(PROMPT[-1], tree, want_hidden=True)
        close(a.logits, b.logits, dtype)
        assert a.hidden is not None and a.hidden.device.type == CUDA.type
        native.commit([0, 3, 4])
        hf.commit([0, 3, 4])
        assert native.cache_len == hf.cache_len == len(PROMPT) + 3
        after = DraftTree(tokens=[9], parents=[0])
        close(native.verify(8, after).logits, hf.verify(8, after).logits, dtype)


def test_native_int8_runs_on_cuda(cuda_model):
    target = NativeTarget.from_hf(cuda_model, quantize="int8")
    out = run(target, RandomDrafter(cuda_model.config.vocab_size, 0), max_new=8)
    assert len(out) == 8


@pytest.mark.parametrize("arch", ["eagle2", "fspad"])
def test_feature_head_drafter_on_cuda_is_lossless(cuda_llm, arch, tmp_path):
    head = random_head_file(cuda_llm.model.config, arch, tmp_path, vocab=list(range(60)))
    prompt = "the cat sat on the mat"
    ref = cuda_llm.generate(prompt, method="ar", max_new_tokens=30)
    for opts in ({}, {"tree_top_k": 2, "depth": 2, "total_tokens": 5}):
        out = cuda_llm.generate(prompt, method=arch, max_new_tokens=30, head=head, **opts)
        assert out.token_ids == ref.token_ids, (arch, opts)
        assert out.stats.num_rounds <= ref.stats.num_rounds
    loaded = cuda_llm.load_feature_head(head)
    assert next(loaded.parameters()).device.type == CUDA.type
    sampled = cuda_llm.generate(
        prompt, method=arch, max_new_tokens=12, head=head, temperature=0.8, seed=1
    )
    assert len(sampled.token_ids) == 12


@pytest.mark.parametrize(
    "method", ["pld", "pld-tree", "aasd", "aasd-exact", "aasd-noalign", "aasd-exact-noalign"]
)
def test_every_method_runs_through_the_api_on_cuda(cuda_llm, method):
    prompt = "the cat sat on the mat and the cat sat on the mat"
    ref = cuda_llm.generate(prompt, method="ar", max_new_tokens=20)
    out = cuda_llm.generate(prompt, method=method, max_new_tokens=20)
    assert out.stats.new_tokens == len(out.token_ids) <= 20
    if "exact" in method or method.startswith("pld"):  # the lossless ones
        assert out.token_ids == ref.token_ids
