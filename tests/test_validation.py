"""Every probe case of issue #14 against the public API: each gives one AlignspecError sentence,
raised by ``stream()`` itself before the model runs, or a correct result.

The tiny LLM (a random 2-layer Llama with the default model's tokenizer) makes each call cost
milliseconds; "before any work" is checked by making the target's prefill explode.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignspec.errors import AlignspecError

PROMPT = "Tell me about the dog and the cat."


@pytest.fixture
def no_work(tiny_bpe_llm, monkeypatch):
    """The tiny LLM with a prefill that fails the test if anything reaches the model."""

    def boom(*args, **kwargs):
        raise AssertionError("the model ran before the arguments were checked")

    monkeypatch.setattr(tiny_bpe_llm.target, "prefill", boom)
    return tiny_bpe_llm


def one_sentence(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert text and "\n" not in text, text
    return text


BAD_CALLS = [
    # (keyword arguments, a piece of the expected sentence)
    ({"method": "pld", "draft_len": "x"}, "draft_len must be an integer >= 1, got 'x'"),
    ({"method": "pld", "draft_len": 2.5}, "draft_len must be an integer >= 1, got 2.5"),
    ({"method": "pld", "draft_len": True}, "draft_len must be an integer >= 1, got True"),
    ({"method": "pld", "draft_len": 0}, "draft_len must be an integer >= 1"),
    ({"method": "pld-tree", "max_nodes": None}, "max_nodes must be an integer >= 1"),
    ({"method": "pld", "tree": "yes"}, "tree must be true or false"),
    ({"method": "aasd", "tau": "big"}, "tau must be a finite number in [0.0, 1.0], got 'big'"),
    ({"method": "aasd", "tau": -5}, "tau must be a finite number in [0.0, 1.0], got -5"),
    ({"method": "aasd", "tau": math.nan}, "tau must be a finite number in [0.0, 1.0], got nan"),
    ({"method": "aasd", "tau": math.inf}, "tau must be a finite number"),
    ({"method": "aasd", "alpha": -1.0}, "alpha must be a finite number >= 0.0"),
    ({"method": "aasd", "siblings": "both"}, "siblings must be one of leaf, continue"),
    ({"method": "aasd-exact", "draft_len": 2.5}, "draft_len must be an integer"),
    ({"method": "eagle2", "depth": -1}, "depth must be an integer >= 0"),
    ({"method": "fspad", "total_tokens": "12"}, "total_tokens must be an integer >= 2"),
    ({"method": "sps", "draft_model": "default", "draft_len": 1.0}, "draft_len must be an int"),
    ({"method": "ar", "draft_len": 3}, "does not take option(s) draft_len"),
    ({"method": "nope"}, "unknown method 'nope'"),
    ({"method": None}, "method must be a method name"),
    ({"max_new_tokens": 2.5}, "max_new_tokens must be a positive integer, got 2.5"),
    ({"max_new_tokens": True}, "max_new_tokens must be a positive integer, got True"),
    ({"max_new_tokens": "8"}, "max_new_tokens must be a positive integer"),
    ({"max_new_tokens": 0}, "max_new_tokens must be a positive integer, got 0"),
    ({"max_new_tokens": -3}, "max_new_tokens must be a positive integer"),
    ({"max_new_tokens": 10_000}, "leaves no room for a prompt"),
    ({"stop": 5}, "stop must be a string or a list of strings, got int"),
    ({"stop": ["ok", 3]}, "stop[1] must be a string, got int"),
    ({"stop": b"dog"}, "stop must be a string or a list of strings"),
    ({"stop": "d\udcffg"}, "the stop string is not valid Unicode text"),
    ({"raw": "yes"}, "raw must be true or false"),
    ({"truncate": "left"}, "unknown truncation 'left'"),
    ({"on_tokens": 3}, "on_tokens must be a callable or None"),
    ({"temperature": -1.0}, "temperature must be a finite number >= 0"),
    ({"temperature": "hot"}, "temperature must be a finite number >= 0"),
    ({"top_k": 2.5}, "top_k must be an integer >= 0"),
    ({"top_p": 0.0}, "top_p must be in (0, 1]"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"repetition_penalty": 0}, "repetition_penalty must be a finite number > 0"),
    ({"method": "aasd", "temperature": 0.7}, "greedy-only"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_CALLS)
def test_bad_argument_is_one_sentence_before_any_work(no_work, kwargs, message):
    with pytest.raises(AlignspecError) as exc:
        no_work.stream(PROMPT, **kwargs)
    assert message in one_sentence(exc)


BAD_PROMPTS = [
    ([{"role": "user", "content": 5}], "the content of message 0 must be a string, got int"),
    ([{"role": "wizard", "content": "hi"}], "message 0 has an unknown role 'wizard'"),
    ([{"role": "user"}], "message 0 needs a 'role' and a 'content'"),
    (["hi"], "message 0 needs a 'role' and a 'content'"),
    ([], "the message list is empty"),
    (5, "the prompt must be a string or a list of chat messages, got int"),
    (b"hi", "the prompt must be a string or a list of chat messages, got bytes"),
    ("   ", "the prompt is empty"),
    ("", "the prompt is empty"),
    ("caf\udce9", "the prompt is not valid Unicode text"),
    ("lone \ud800 surrogate", "the prompt is not valid Unicode text"),
    (
        [{"role": "system", "content": "ok"}, {"role": "user", "content": "x\udc80"}],
        "the content of message 1 is not valid Unicode text",
    ),
    (None, "give a prompt"),
]


@pytest.mark.parametrize(("prompt", "message"), BAD_PROMPTS)
def test_bad_prompt_is_one_sentence_before_any_work(no_work, prompt, message):
    with pytest.raises(AlignspecError) as exc:
        no_work.stream(prompt)
    assert message in one_sentence(exc)


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ([1, 2, 10**6], "prompt_ids[2] = 1000000 is outside the model's vocabulary [0, 49152)"),
        ([-1], "prompt_ids[0] = -1 is outside the model's vocabulary"),
        ([1, "a"], "prompt_ids[1] must be an integer token id, got 'a'"),
        ([1, 2.0], "prompt_ids[1] must be an integer token id, got 2.0"),
        ([True], "prompt_ids[0] must be an integer token id, got True"),
        ([None], "prompt_ids[0] must be an integer token id"),
        ("123", "prompt_ids must be a list of token ids, got str"),
        (7, "prompt_ids must be a list of token ids, got int"),
        ([], "the prompt is empty"),
    ],
)
def test_bad_prompt_ids_are_one_sentence_before_any_work(no_work, ids, message):
    with pytest.raises(AlignspecError) as exc:
        no_work.stream(prompt_ids=ids)
    assert message in one_sentence(exc)


def test_known_roles_and_numpy_ids_are_accepted(tiny_bpe_llm):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Again"},
    ]
    assert len(tiny_bpe_llm.generate(messages, max_new_tokens=3).token_ids) == 3
    ids = np.array([1, 2, 3, 400], dtype=np.int64)
    out = tiny_bpe_llm.generate(prompt_ids=ids, max_new_tokens=3)
    assert out.prompt_ids == [1, 2, 3, 400]
    assert tiny_bpe_llm.generate(prompt_ids=list(ids), max_new_tokens=np.int64(2)).token_ids


def test_numeric_option_types_that_mean_the_same_are_normalised(tiny_bpe_llm):
    ref = tiny_bpe_llm.generate(PROMPT, method="pld", max_new_tokens=6, draft_len=4)
    out = tiny_bpe_llm.generate(PROMPT, method="pld", max_new_tokens=6, draft_len=np.int32(4))
    assert out.token_ids == ref.token_ids
    aasd = tiny_bpe_llm.generate(PROMPT, method="aasd", max_new_tokens=6, tau=1)  # int -> float
    assert len(aasd.token_ids) == 6


@pytest.fixture(scope="module")
def ar_text(tiny_bpe_llm) -> str:
    return tiny_bpe_llm.generate(PROMPT, max_new_tokens=24).text


def stop_inside(text: str) -> str:
    """A 3-character stop string from the middle of ``text`` whose characters also occur
    earlier on their own (so splitting it into characters would stop too early)."""
    for i in range(4, len(text) - 3):
        piece = text[i : i + 3]
        if piece.strip() and text.find(piece) == i and any(c in text[:i] for c in piece):
            return piece
    pytest.skip("the tiny model's text has no suitable stop string")


def test_a_string_stop_is_one_stop_string(tiny_bpe_llm, ar_text):
    stop = stop_inside(ar_text)
    out = tiny_bpe_llm.generate(PROMPT, max_new_tokens=24, stop=stop)
    assert out.text == ar_text[: ar_text.find(stop)]
    assert out.finish_reason == "stop"
    assert tiny_bpe_llm.generate(PROMPT, max_new_tokens=24, stop=[stop]).text == out.text


def test_stop_none_means_no_stop_strings(tiny_bpe_llm, ar_text):
    out = tiny_bpe_llm.generate(PROMPT, max_new_tokens=24, stop=None)
    assert out.text == ar_text
    assert tiny_bpe_llm.generate(PROMPT, max_new_tokens=24, stop=("", "")).text == ar_text


def test_next_works_on_a_generation(tiny_bpe_llm, ar_text):
    gen = tiny_bpe_llm.stream(PROMPT, max_new_tokens=24)
    first = next(gen)
    assert isinstance(first, str)
    rest = "".join(gen)
    assert first + rest == ar_text
    with pytest.raises(StopIteration):
        next(gen)
    assert gen.output is not None and gen.output.text == ar_text
    assert iter(gen) is gen
