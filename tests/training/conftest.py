"""Tiny fixtures for head training: the tiny Llama with a word-level chat tokenizer, a few
hand-made conversations, and their features extracted once per session."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from alignspec.api import LLM
from alignspec.training.data import Conversation
from tests.bench.conftest import VOCAB, make_tiny_tokenizer
from tests.conftest import make_tiny_llama

WORDS = "the a cat dog sat on mat and ran to park it was happy sad big small red blue"


def make_conversations(n: int, seed: int = 0) -> list[Conversation]:
    """``n`` short chats (one or two exchanges) in the tiny tokenizer's vocabulary."""
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS.split(" ")) for _ in range(k))

    convs = []
    for i in range(n):
        messages = [
            {"role": "user", "content": text(rng.randint(2, 6))},
            {"role": "assistant", "content": text(rng.randint(4, 30))},
        ]
        if i % 3 == 0:
            messages += [
                {"role": "user", "content": text(3)},
                {"role": "assistant", "content": text(rng.randint(4, 12))},
            ]
        convs.append(Conversation(f"conv-{i}", tuple(messages)))
    return convs


@pytest.fixture(scope="session")
def tiny_head_llm() -> LLM:
    return LLM(make_tiny_llama(vocab=VOCAB), make_tiny_tokenizer())


@pytest.fixture(scope="session")
def tiny_features(tiny_head_llm: LLM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train (24 chats) and eval (6 chats) features of the tiny model, top-8, max 64 tokens."""
    from alignspec.training.features import extract_features

    root = tmp_path_factory.mktemp("features")
    convs = make_conversations(30)
    common = {"topk": 8, "max_len": 64, "shard_size": 10, "progress": False}
    extract_features(tiny_head_llm, convs[:24], root / "train", **common)
    extract_features(
        tiny_head_llm, convs[24:], root / "eval", split="eval", frequencies=False, **common
    )
    return root


@pytest.fixture(scope="session")
def tiny_head_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model and tokenizer as a HF directory, for ``--target`` on the CLI."""
    folder = tmp_path_factory.mktemp("tiny-target")
    make_tiny_llama(vocab=VOCAB).save_pretrained(folder)
    make_tiny_tokenizer().save_pretrained(folder)
    return folder
