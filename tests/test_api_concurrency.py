"""One ``LLM`` holds one KV cache: generations must never share it.

Other threads are serialised (their output equals the solo output); a second generation opened
on the thread whose generation is still open is refused with a clear error instead of garbling
both texts.
"""

from __future__ import annotations

import threading

import pytest

from alignspec.api import LLM
from alignspec.errors import AlignspecError
from tests.bench.conftest import VOCAB, make_tiny_tokenizer
from tests.conftest import make_tiny_llama

PROMPTS = [[5, 9, 12, 5, 9, 14, 30], [7, 7, 21, 40, 22, 7, 7, 21]]
SETTINGS = {"method": "pld", "max_new_tokens": 24}


@pytest.fixture(scope="module")
def llm(single_thread) -> LLM:
    return LLM(make_tiny_llama(vocab=VOCAB), make_tiny_tokenizer())


def solo(llm: LLM, ids: list[int]) -> list[int]:
    return llm.generate(prompt_ids=ids, **SETTINGS).token_ids


def test_two_threads_get_their_solo_outputs(llm):
    expected = [solo(llm, ids) for ids in PROMPTS]
    results: dict[int, list[list[int]]] = {0: [], 1: []}

    def work(k: int) -> None:
        for _ in range(3):
            results[k].append(llm.generate(prompt_ids=PROMPTS[k], **SETTINGS).token_ids)

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == {0: [expected[0]] * 3, 1: [expected[1]] * 3}


def test_other_thread_waits_for_an_open_stream(llm):
    expected = solo(llm, PROMPTS[1])
    first = iter(llm.stream(prompt_ids=PROMPTS[0], **SETTINGS))
    next(first)  # the main thread now holds the KV cache
    out: list[list[int]] = []
    worker = threading.Thread(
        target=lambda: out.append(llm.generate(prompt_ids=PROMPTS[1], **SETTINGS).token_ids)
    )
    worker.start()
    worker.join(timeout=0.5)
    assert worker.is_alive() and not out  # waiting, not running on the shared cache
    first.close()
    worker.join(timeout=60)
    assert out == [expected]


def test_interleaved_streams_on_one_thread_are_refused(llm):
    expected = solo(llm, PROMPTS[0])
    gen = llm.stream(prompt_ids=PROMPTS[0], **SETTINGS)
    it = iter(gen)
    pieces = [next(it)]
    with pytest.raises(AlignspecError, match="another generation is still running"):
        llm.stream(prompt_ids=PROMPTS[1], **SETTINGS)
    with pytest.raises(AlignspecError, match="another generation is still running"):
        llm.generate(prompt_ids=PROMPTS[1], **SETTINGS)
    pieces.extend(it)  # the open generation is unharmed by the refused ones
    assert gen.output is not None and gen.output.token_ids == expected
    assert "".join(pieces) == gen.output.text
    assert solo(llm, PROMPTS[1]) == solo(llm, PROMPTS[1])  # the cache is free again


def test_second_stream_created_early_fails_when_it_starts(llm):
    first = iter(llm.stream(prompt_ids=PROMPTS[0], **SETTINGS))
    second = iter(llm.stream(prompt_ids=PROMPTS[1], **SETTINGS))  # created, not started
    next(first)
    with pytest.raises(AlignspecError, match="another generation is still running"):
        next(second)
    first.close()
    assert solo(llm, PROMPTS[0]) == solo(llm, PROMPTS[0])
