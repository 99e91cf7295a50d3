"""The server through the official ``openai`` client: chat and text completions, streamed and
not, equal to each other and to ``alignspec generate`` (``LLM.generate``) with the same settings
(greedy, lossless method)."""

from __future__ import annotations

import pytest

from tests.server.conftest import MODEL, get

pytestmark = pytest.mark.real

MESSAGES = [{"role": "user", "content": "Name three colours of the rainbow."}]
PROMPT = "The capital of France is"
SETTINGS = {"max_tokens": 20, "temperature": 0}
PLD = {"alignspec": {"method": "pld", "options": {"draft_len": 4}}}


@pytest.fixture(scope="module")
def client(server):
    return server.client(max_retries=0, timeout=120)


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    status, body = get(server.url + "/health")
    assert status == 200 and '"ok"' in body


def test_chat_streamed_equals_whole_equals_generate(client, real_llm, single_thread):
    whole = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, extra_body=PLD, **SETTINGS
    )
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=PLD,
            **SETTINGS,
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    expected = real_llm.generate(MESSAGES, method="pld", max_new_tokens=20, draft_len=4)
    assert whole.choices[0].message.content == streamed == expected.text
    assert whole.choices[0].finish_reason == expected.finish_reason
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == expected.finish_reason
    assert chunks[0].choices[0].delta.role == "assistant"
    usage = whole.usage
    assert usage.prompt_tokens == len(expected.prompt_ids)
    assert usage.completion_tokens == len(expected.token_ids)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert chunks[-1].choices == [] and chunks[-1].usage == usage
    block = whole.model_extra["alignspec"]
    assert block["method"] == "pld"
    assert block["rounds"] == expected.stats.counters.num_rounds
    assert block["tau"] == pytest.approx(expected.stats.counters.tau)


def test_completion_streamed_equals_whole_equals_generate(client, real_llm, single_thread):
    whole = client.completions.create(model=MODEL, prompt=PROMPT, extra_body=PLD, **SETTINGS)
    stream = client.completions.create(
        model=MODEL, prompt=PROMPT, stream=True, extra_body=PLD, **SETTINGS
    )
    streamed = "".join(c.choices[0].text for c in stream if c.choices)
    expected = real_llm.generate(PROMPT, raw=True, method="pld", max_new_tokens=20, draft_len=4)
    assert whole.choices[0].text == streamed == expected.text
    assert whole.usage.completion_tokens == len(expected.token_ids)


def test_server_default_method_and_lossless_methods_agree(client):
    """No ``alignspec`` field: the server's method (pld); ar and aasd-exact give the same text."""
    texts = {}
    for method in (None, "ar", "aasd-exact"):
        extra = {"alignspec": {"method": method}} if method else {}
        out = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, extra_body=extra, **SETTINGS
        )
        texts[method] = out.choices[0].message.content
        assert out.model_extra["alignspec"]["method"] == (method or "pld")
    assert len(set(texts.values())) == 1, texts


def test_stop_string_and_max_completion_tokens(client, real_llm, single_thread):
    out = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_completion_tokens=20, temperature=0, stop=[","]
    )
    expected = real_llm.generate(MESSAGES, method="pld", max_new_tokens=20, stop=[","])
    assert out.choices[0].message.content == expected.text
    assert "," not in out.choices[0].message.content
    assert out.choices[0].finish_reason == expected.finish_reason


def test_seeded_sampling_is_reproducible(client):
    kwargs = {"max_tokens": 12, "temperature": 0.9, "top_p": 0.95, "seed": 7}
    a, b = (
        client.chat.completions.create(model=MODEL, messages=MESSAGES, **kwargs).choices[0]
        for _ in range(2)
    )
    assert a.message.content == b.message.content


def test_completion_from_token_ids(client, real_llm, single_thread):
    ids = real_llm.tokenizer(PROMPT)["input_ids"]
    out = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0)
    expected = real_llm.generate(prompt_ids=ids, method="pld", max_new_tokens=8)
    assert out.choices[0].text == expected.text
    assert out.usage.prompt_tokens == len(ids)
