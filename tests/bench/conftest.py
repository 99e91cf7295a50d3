"""A complete tiny LLM (random 2-layer Llama + word-level tokenizer with a chat template), so
the benchmark harness runs end to end in seconds without the real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from alignspec.api import LLM
from tests.conftest import make_tiny_llama

VOCAB = 96
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0..3; the tiny Llama's EOS is 2
WORD_TEXT = (
    "the a cat dog sat on mat and ran to park it was happy sad big small red blue "
    "write story about summarize text user assistant : . , ? ! i you we they he she"
)
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


def make_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer whose vocabulary is exactly the tiny model's."""
    named = SPECIALS + WORD_TEXT.split()
    words = named + [f"w{i}" for i in range(VOCAB - len(named))]
    assert len(words) == VOCAB
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="session")
def tiny_llm() -> LLM:
    return LLM(make_tiny_llama(vocab=VOCAB), make_tiny_tokenizer())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model and tokenizer saved as a HF directory, for ``--model`` on the CLI."""
    folder = tmp_path_factory.mktemp("tiny-model")
    make_tiny_llama(vocab=VOCAB).save_pretrained(folder)
    make_tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-question Spec-Bench file: one two-turn conversation and one summary with a
    reference, so the run covers multi-turn context and a quality metric."""
    rows = [
        {
            "question_id": 81,
            "category": "writing",
            "turns": ["write a story about the cat", "summarize the story"],
        },
        {
            "question_id": 241,
            "category": "summarization",
            "turns": ["summarize : the dog ran to the park and the dog was happy ."],
            "reference": ["the dog ran to the park"],
        },
    ]
    folder = tmp_path_factory.mktemp("data")
    (folder / "spec_bench").mkdir()
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    (folder / "spec_bench" / "question.jsonl").write_text(lines)
    return folder
