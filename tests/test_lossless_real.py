"""End to end on the embedded SmolLM2-135M-Instruct: greedy speculative output equals plain
greedy output token for token on real Spec-Bench prompts from all six groups, and the engine's
plain decoding equals transformers' own ``generate``."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.real

GROUPS = {
    "multi-turn": {
        "writing",
        "roleplay",
        "reasoning",
        "math",
        "coding",
        "extraction",
        "stem",
        "humanities",
    },
    "translation": {"translation"},
    "summarization": {"summarization"},
    "qa": {"qa"},
    "math_reasoning": {"math_reasoning"},
    "rag": {"rag"},
}
PER_GROUP = 4
MAX_NEW = 32


def pick_prompts(rows: list[dict]) -> list[tuple[str, str]]:
    picked: list[tuple[str, str]] = []
    for group, cats in GROUPS.items():
        rows_g = [r for r in rows if r["category"] in cats]
        step = max(1, len(rows_g) // PER_GROUP)
        picked += [(group, r["turns"][0]) for r in rows_g[::step][:PER_GROUP]]
    return picked


def divergence_report(llm, prompt_ids: list[int], a: list[int], b: list[int]) -> str:
    """First differing position and the target's top-2 logit gap there (numerics vs bug)."""
    k = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    with torch.inference_mode():
        logits = llm.model(torch.tensor([prompt_ids + a[:k]])).logits[0, -1].float()
    top = logits.topk(2).values
    return (
        f"first divergence at token {k}: {a[k]} vs {b[k]}, top-2 gap {float(top[0] - top[1]):.2e}"
    )


@pytest.fixture(scope="module")
def prompts(spec_bench_rows):
    return pick_prompts(spec_bench_rows)


@pytest.fixture(scope="module")
def ar_outputs(real_llm, prompts):
    return [real_llm.generate(p, method="ar", max_new_tokens=MAX_NEW) for _, p in prompts]


def test_covers_all_groups(prompts):
    assert len(prompts) >= 20
    assert {g for g, _ in prompts} == set(GROUPS)


@pytest.mark.parametrize("method", ["pld", "pld-tree", "aasd-exact", "eagle2", "fspad"])
def test_speculative_identical_to_ar(real_llm, prompts, ar_outputs, method):
    accepted = 0
    for (group, prompt), ref in zip(prompts, ar_outputs, strict=True):
        out = real_llm.generate(prompt, method=method, max_new_tokens=MAX_NEW)
        if out.token_ids != ref.token_ids:
            pytest.fail(
                f"{method} != ar on a {group} prompt: "
                + divergence_report(real_llm, ref.prompt_ids, ref.token_ids, out.token_ids)
            )
        accepted += sum(r.accepted for r in out.stats.rounds)
    assert accepted > 0  # the drafts were really exercised


@pytest.fixture(scope="module")
def int8_llm():
    import alignspec

    return alignspec.load("default", device="cpu", quantize="int8")


@pytest.fixture(scope="module")
def int8_prompts(prompts):
    """Every other prompt (two per group): int8 is not faster than fp32 on every CPU, and these
    tests run six generations per prompt."""
    return prompts[::2]


@pytest.fixture(scope="module")
def int8_ar_outputs(int8_llm, int8_prompts):
    return [int8_llm.generate(p, method="ar", max_new_tokens=MAX_NEW) for _, p in int8_prompts]


@pytest.mark.parametrize("method", ["pld", "pld-tree", "aasd-exact", "eagle2", "fspad"])
def test_int8_speculative_identical_to_int8_ar(int8_llm, int8_prompts, int8_ar_outputs, method):
    """Lossless relative to the int8 model's own plain decoding, trees included (which needs
    the exact attention of ``targets/native/attention.py``)."""
    for (group, prompt), ref in zip(int8_prompts, int8_ar_outputs, strict=True):
        out = int8_llm.generate(prompt, method=method, max_new_tokens=MAX_NEW)
        pairs = zip(ref.token_ids, out.token_ids, strict=False)
        k = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
        assert out.token_ids == ref.token_ids, f"{method} != int8 ar on a {group} prompt at {k}"


def test_ar_equals_transformers_generate(real_llm, prompts, ar_outputs):
    for (group, _), ref in zip(prompts, ar_outputs, strict=True):
        with torch.inference_mode():
            hf = real_llm.model.generate(
                torch.tensor([ref.prompt_ids]),
                max_new_tokens=MAX_NEW,
                do_sample=False,
                pad_token_id=real_llm.tokenizer.eos_token_id,
            )[0, len(ref.prompt_ids) :].tolist()
        assert hf == ref.token_ids, f"{group}: " + divergence_report(
            real_llm, ref.prompt_ids, hf, ref.token_ids
        )


def test_stop_string_and_stream_on_real_model(real_llm):
    prompt = "Summarize: The cat sat on the mat. The cat was happy on the mat all day long."
    full = real_llm.generate(prompt, method="pld", max_new_tokens=40)
    words = full.text.split()
    assert len(words) >= 4, full.text
    stop = words[len(words) // 2]
    cut = full.text.index(stop)
    gen = real_llm.stream(prompt, method="pld", max_new_tokens=40, stop=[stop])
    text = "".join(gen)
    assert gen.output is not None and gen.output.finish_reason == "stop"
    assert text == gen.output.text == full.text[:cut]
    assert len(gen.output.token_ids) < len(full.token_ids)
    assert gen.output.token_ids == full.token_ids[: len(gen.output.token_ids)]


def test_aasd_exact_identical_on_multi_news(real_llm):
    """LongBench Multi-News prompts, middle-truncated to keep CI short, through AASD-exact."""
    from alignspec.bench.datasets import load_suite
    from alignspec.errors import AlignspecError
    from alignspec.prompting import truncate_middle

    try:
        items = load_suite("multi-news", limit_per_group=3)
    except AlignspecError as exc:  # no ../shared/data next to this checkout
        pytest.skip(str(exc))
    accepted = 0
    for item in items:
        ids = truncate_middle(real_llm.encode(item.turns[0], max_new_tokens=MAX_NEW), 1536)
        ref = real_llm.generate(prompt_ids=ids, method="ar", max_new_tokens=MAX_NEW)
        out = real_llm.generate(prompt_ids=ids, method="aasd-exact", max_new_tokens=MAX_NEW)
        assert out.token_ids == ref.token_ids, divergence_report(
            real_llm, ids, ref.token_ids, out.token_ids
        )
        accepted += sum(r.accepted for r in out.stats.rounds)
    assert accepted > 0
