"""Shared fixtures: a tiny random Llama for fast unit tests, the real default model for a few
end-to-end tests, and the shared benchmark data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


#: dimensions shared by every tiny random model in the tests (Llama, Qwen2, Mistral)
TINY_DIMS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 256,
}


def make_tiny_llama(
    seed: int = 0, vocab: int = 96, eos: int = 2, init: float = 0.3, **overrides
) -> LlamaForCausalLM:
    """A 2-layer random Llama with a small vocabulary.

    ``init`` (the initializer range) is large by default so next-token distributions are
    peaked: greedy identity checks then test the tree machinery rather than fp32 rounding at
    near-ties. Sampling tests pass a smaller one so distributions are spread over many tokens.
    ``overrides`` go to the config (e.g. ``rope_parameters``).
    """
    torch.manual_seed(seed)
    settings = {
        **TINY_DIMS,
        "num_key_value_heads": 2,
        "initializer_range": init,
        "eos_token_id": eos,
        "bos_token_id": 1,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
        **overrides,
    }
    config = LlamaConfig(vocab_size=vocab, **settings)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = eos
    return model


@pytest.fixture(scope="module")
def single_thread():
    """Run torch on one thread: tiny models gain nothing from intra-op threads, and on a busy
    machine two contending threads make each tiny forward ~50x slower (sampling tests run
    thousands of them)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_llama() -> LlamaForCausalLM:
    return make_tiny_llama()


@pytest.fixture(scope="session")
def real_llm():
    """The embedded default model (SmolLM2-135M-Instruct), loaded once per test session."""
    import alignspec

    return alignspec.load("default", device="cpu")


@pytest.fixture(scope="session")
def spec_bench_rows() -> list[dict]:
    path = DATA_DIR / "spec_bench" / "question.jsonl"
    if not path.is_file():
        pytest.skip(f"Spec-Bench data not found at {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def tiny_bpe_llm():
    """An :class:`~alignspec.api.LLM` around a tiny random Llama with the default model's real
    tokenizer and chat template: the whole API (text, messages, stop strings, every method
    without a trained head) in milliseconds per call. Skipped where the default model package
    (the tokenizer's source) is not installed."""
    from transformers import AutoTokenizer

    from alignspec.api import LLM
    from alignspec.errors import AlignspecError
    from alignspec.loading import local_dir_for, resolve

    try:
        where = local_dir_for(resolve("default"))
    except AlignspecError as exc:
        pytest.skip(f"no tokenizer for the tiny LLM: {exc}")
    tokenizer = AutoTokenizer.from_pretrained(where)
    model = make_tiny_llama(vocab=len(tokenizer), eos=tokenizer.eos_token_id)
    return LLM(model, tokenizer)
