"""A short load test (``benchmarks/load_test.py`` is the long one): concurrent streaming
clients with mixed methods all complete, each equals its single-request output (lossless ones
also equal plain decoding), and ``/metrics`` adds up to the responses' usage."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.server.conftest import MODEL, metric_sum

pytestmark = pytest.mark.real

PROMPTS = ["Count from one to five.", "What is 2 + 2?", "Name a fruit.", "Say hello in French."]
METHODS = ["ar", "pld", "aasd", "aasd-exact"]
LOSSLESS = {"ar", "pld", "aasd-exact"}
CLIENTS = 8
MAX_TOKENS = 12


def stream_one(client, prompt: str, method: str) -> tuple[str, dict, dict]:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"alignspec": {"method": method}},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    last = chunks[-1]
    return text, last.usage.model_dump(), last.model_extra["alignspec"]


def test_concurrent_mixed_methods(server):
    client = server.client(max_retries=0, timeout=300)
    jobs = [(PROMPTS[i % len(PROMPTS)], METHODS[i % len(METHODS)]) for i in range(CLIENTS)]
    solo = {}
    for prompt, method in sorted(set(jobs) | {(p, "ar") for p, _ in jobs}):
        solo[prompt, method] = stream_one(client, prompt, method)[0]

    before = server.metrics()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(lambda job: stream_one(client, *job), jobs))
    after = server.metrics()

    for (prompt, method), (text, _, block) in zip(jobs, results, strict=True):
        assert block["method"] == method
        assert text == solo[prompt, method], (prompt, method)
        if method in LOSSLESS:
            assert text == solo[prompt, "ar"], (prompt, method)

    def grew(name: str) -> float:
        return metric_sum(after, name) - metric_sum(before, name)

    usages = [u for _, u, _ in results]
    blocks = [b for _, _, b in results]
    assert grew("alignspec:request_success_total") == CLIENTS
    assert grew("alignspec:prompt_tokens_total") == sum(u["prompt_tokens"] for u in usages)
    assert grew("alignspec:generation_tokens_total") == sum(u["completion_tokens"] for u in usages)
    for series, key in [
        ("alignspec:spec_decode_num_drafts_total", "num_drafts"),
        ("alignspec:spec_decode_num_draft_tokens_total", "num_draft_tokens"),
        ("alignspec:spec_decode_num_accepted_tokens_total", "num_accepted_tokens"),
        ("alignspec:spec_decode_num_rounds_total", "rounds"),
    ]:
        assert grew(series) == sum(b[key] for b in blocks), series
    # every accepted token sits at exactly one depth
    assert grew("alignspec:spec_decode_num_accepted_tokens_per_pos_total") == grew(
        "alignspec:spec_decode_num_accepted_tokens_total"
    )
    assert metric_sum(after, "alignspec:num_requests_waiting") == 0
