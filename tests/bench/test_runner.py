"""The benchmark loop on a tiny random model: output files, record shape, conversations,
peers and the engine agreeing token for token, repeats, and method/option checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignspec.api import LLM
from alignspec.bench.backends import check_options, make_backends, resolve_methods
from alignspec.bench.datasets import BenchItem
from alignspec.bench.metrics import read_records
from alignspec.bench.peers import PEERS, cut_like_engine, peer_generate
from alignspec.bench.runner import build_record, run_bench, run_conversation, shorten_items
from alignspec.errors import AlignspecError

METHODS = ["ar", "pld", "hf-ar", "hf-pld"]


@pytest.fixture(scope="module")
def bench_run(
    tiny_llm: LLM, tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict]:
    """One two-prompt run shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("run")
    summary = run_bench(
        tiny_llm,
        "spec-bench",
        ",".join(METHODS),
        data_dir=tiny_data_dir,
        max_new_tokens=8,
        warmup=1,
        output_dir=out,
        progress=False,
    )
    return out, summary


def test_every_output_file_is_written(bench_run: tuple[Path, dict]) -> None:
    out, _ = bench_run
    for name in [*(f"{m}.jsonl" for m in METHODS), "results.json", "results.md"]:
        assert (out / name).is_file(), name
    for name in ("speedup.png", "tau.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| method | group |" in (out / "results.md").read_text()


def test_records_have_the_spec_bench_shape(bench_run: tuple[Path, dict]) -> None:
    out, _ = bench_run
    ar = {r.question_id: r for r in read_records(out / "ar.jsonl")}
    assert set(ar) == {81, 241}
    conv = ar[81]
    assert conv.group == "multi-turn" and conv.method == "ar"
    choice = conv.choice
    assert len(choice.turns) == len(choice.new_tokens) == len(choice.wall_time) == 2
    assert [len(t) for t in choice.token_ids] == choice.new_tokens
    assert sum(choice.accept_lengths) + 2 == sum(choice.new_tokens)  # prefill token per turn
    assert len(choice.proposed_lengths) == len(choice.accept_lengths)
    assert conv.peak_memory_mb and conv.peak_memory_mb > 0
    assert "rougeL" in ar[241].extra["quality"]
    peer = {r.question_id: r for r in read_records(out / "hf-pld.jsonl")}[81]
    assert peer.choice.accept_lengths == [] and peer.choice.extra["forward_passes"][0] >= 1


def test_summary_speedup_identity_and_na_tau(bench_run: tuple[Path, dict]) -> None:
    out, summary = bench_run
    assert list(summary) == METHODS
    assert summary["ar"]["overall"]["speedup"] == pytest.approx(1.0)
    assert summary["ar"]["overall"]["tau"] == pytest.approx(1.0)
    for method in METHODS:
        assert summary[method]["overall"]["identical_share"] == 1.0, method
        assert summary[method]["overall"]["lossless"] is True
    assert summary["hf-ar"]["overall"]["tau_forward_passes"] == pytest.approx(1.0)
    results = json.loads((out / "results.json").read_text())
    assert results["summary"]["hf-pld"]["overall"]["tau"] is None  # n/a, not invented
    assert results["summary"]["hf-pld"]["overall"]["draft_time_share"] is None
    assert "rougeL" in results["summary"]["pld"]["summarization"]["quality"]
    assert results["divergences"] == {"pld": [], "hf-ar": [], "hf-pld": []}
    assert results["config"]["methods"] == METHODS
    assert results["config"]["order"].startswith("interleaved")


def _spy(llm: LLM, monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, dict]]:
    calls: list[tuple[object, dict]] = []
    real = llm.generate

    def spy(prompt=None, **kwargs):
        calls.append((prompt, kwargs))
        return real(prompt, **kwargs)

    monkeypatch.setattr(llm, "generate", spy)
    return calls


def test_turn_two_sees_the_models_own_answer(
    tiny_llm: LLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy(tiny_llm, monkeypatch)
    (backend,) = make_backends(tiny_llm, ["ar"])
    item = BenchItem(1, "multi-turn", "writing", ["write a story", "summarize it"])
    first, _ = run_conversation(backend, item, 6)
    assert len(calls) == 2
    messages = calls[1][0]
    assert messages == [
        {"role": "user", "content": "write a story"},
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "summarize it"},
    ]
    assert calls[1][1]["truncate"] == "middle" and calls[1][1]["raw"] is False


def test_raw_items_skip_the_chat_template(tiny_llm: LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy(tiny_llm, monkeypatch)
    (backend,) = make_backends(tiny_llm, ["pld"])
    item = BenchItem("HumanEval/0", "humaneval", "humaneval", ["the cat sat on"], raw=True)
    (turn,) = run_conversation(backend, item, 5)
    assert calls[0][0] == "the cat sat on" and calls[0][1]["raw"] is True
    assert turn.new_tokens == len(turn.token_ids) <= 5


def test_peers_stop_at_eos_like_the_engine(tiny_llm: LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = tiny_llm.encode("the cat sat on the mat", max_new_tokens=12)
    free = tiny_llm.generate(prompt_ids=ids, max_new_tokens=12).token_ids
    # pretend the 4th generated token is EOS: the engine and every peer must stop on it
    stop_at = next(i for i in range(3, len(free)) if free[i] not in free[:i])
    monkeypatch.setattr(tiny_llm, "eos_ids", frozenset({free[stop_at]}))
    engine = tiny_llm.generate(prompt_ids=ids, max_new_tokens=12)
    assert engine.token_ids == free[: stop_at + 1] and engine.finish_reason == "stop"
    for name in ("hf-ar", "hf-pld", "hf-assisted"):
        out = peer_generate(tiny_llm, PEERS[name], ids, 12, draft=tiny_llm)
        assert out.token_ids == engine.token_ids, name


def test_cut_like_engine() -> None:
    assert cut_like_engine([5, 2, 7], frozenset({2}), 10) == [5, 2]
    assert cut_like_engine([5, 6, 7], frozenset({2}), 2) == [5, 6]


def test_repeats_keep_the_median_run(tiny_llm: LLM) -> None:
    from alignspec.bench.backends import TurnResult
    from alignspec.bench.runner import TimedRun

    (backend,) = make_backends(tiny_llm, ["ar"])
    item = BenchItem(7, "qa", "qa", ["who ran ?"])

    def run(wall: float) -> TimedRun:
        return TimedRun([TurnResult(f"t{wall}", [4], 1, wall, 3, "length")], 10.0 + wall)

    record = build_record(item, backend, [run(3.0), run(1.0), run(2.0)], "tiny")
    assert record.choice.wall_time == [2.0] and record.choice.turns == ["t2.0"]
    assert record.extra["wall_time_repeats"] == [3.0, 1.0, 2.0]
    assert record.peak_memory_mb == 13.0
    lower = build_record(item, backend, [run(3.0), run(1.0)], "tiny")
    assert lower.choice.wall_time == [1.0]


def test_method_list_and_options_are_checked() -> None:
    assert resolve_methods("pld, hf-ar", "ar") == ["ar", "pld", "hf-ar"]
    assert resolve_methods(["ar", "pld"], "ar") == ["ar", "pld"]
    with pytest.raises(AlignspecError, match=r"unknown method 'nope'.*hf-pld"):
        resolve_methods("ar,nope", "ar")
    with pytest.raises(AlignspecError, match="listed twice"):
        resolve_methods("pld,pld", "ar")
    with pytest.raises(AlignspecError, match="no methods"):
        resolve_methods(" , ", "ar")
    with pytest.raises(AlignspecError, match="not taken by any listed method"):
        check_options(["ar", "hf-ar"], {"draft_len": 3}, draft=None)
    with pytest.raises(AlignspecError, match="needs a draft model"):
        check_options(["ar", "hf-assisted"], {}, draft=None)
    check_options(["ar", "pld"], {"draft_len": 3}, draft=None)


def test_options_go_only_to_methods_that_take_them(tiny_llm: LLM) -> None:
    from alignspec.bench.backends import _own_options

    assert _own_options("pld", {"draft_len": 3}) == {"draft_len": 3}
    assert _own_options("ar", {"draft_len": 3}) == {}
    assert "tree" not in _own_options("pld-tree", {"tree": False})  # presets define the method
    backends = make_backends(tiny_llm, ["ar", "pld"], {"draft_len": 2})
    assert [b.name for b in backends] == ["ar", "pld"]


def test_bad_numbers_are_refused(tiny_llm: LLM, tmp_path: Path) -> None:
    item = BenchItem(1, "qa", "qa", ["hi"])
    for kwargs, flag in (
        ({"repeats": 0}, "--repeats"),
        ({"warmup": -1}, "--warmup"),
        ({"max_new_tokens": 0}, "--max-new-tokens"),
        ({"limit": 0}, "--limit"),
    ):
        with pytest.raises(AlignspecError, match=flag):
            run_bench(tiny_llm, [item], "ar", output_dir=tmp_path, progress=False, **kwargs)


def test_max_prompt_tokens_is_checked(tiny_llm: LLM, tmp_path: Path) -> None:
    item = BenchItem(1, "qa", "qa", ["hi"])
    with pytest.raises(AlignspecError, match="--max-prompt-tokens"):
        run_bench(tiny_llm, [item], "ar", output_dir=tmp_path, progress=False, max_prompt_tokens=3)


def test_shorten_items_keeps_both_ends(tiny_llm: LLM) -> None:
    words = ["the", "cat", "sat", "on", "mat", "and", "ran", "to", "park", "it", "was", "happy"]
    long_turn = " ".join(words * 3)  # 36 words, one token each
    items = [BenchItem(1, "sum", "sum", [long_turn, "dog"])]
    (short,) = shorten_items(items, tiny_llm.tokenizer, 16)
    ids = tiny_llm.tokenizer(short.turns[0], add_special_tokens=False)["input_ids"]
    assert len(ids) == 16
    assert short.turns[0].split()[:8] == words[:8]  # head: the instruction side
    assert short.turns[0].split()[-8:] == (words * 3)[-8:]  # tail: the question side
    assert short.turns[1] == "dog" and items[0].turns[0] == long_turn  # untouched / not mutated


def test_sampled_runs_reach_the_engine_and_repeat_with_the_seed(
    tiny_llm: LLM, tmp_path: Path
) -> None:
    from alignspec.sampling import SamplingParams

    items = [BenchItem(i, "qa", "qa", [f"write story about the {w}"]) for i, w in enumerate("ab")]
    sampled = SamplingParams(temperature=1.0)

    def ids(out: str, sampling: SamplingParams | None) -> list[list[int]]:  # ar, per prompt
        run_bench(
            tiny_llm, items, "ar,pld", output_dir=tmp_path / out, max_new_tokens=12,
            warmup=0, progress=False, sampling=sampling,
        )  # fmt: skip
        return [r.choice.token_ids[0] for r in read_records(tmp_path / out / "ar.jsonl")]

    first, again, greedy = ids("t1", sampled), ids("t1-again", sampled), ids("greedy", None)
    assert first == again  # torch is seeded before every run
    assert first != greedy  # the temperature reached the engine
    config = json.loads((tmp_path / "t1" / "results.json").read_text())["config"]
    assert config["sampling"]["temperature"] == 1.0
    assert "sampling, temperature 1.0" in (tmp_path / "t1" / "results.md").read_text()
    assert "decoding: greedy" in (tmp_path / "greedy" / "results.md").read_text()


def test_sampling_is_refused_for_greedy_only_methods_and_peers(tiny_llm: LLM) -> None:
    from alignspec.bench.backends import check_sampling
    from alignspec.sampling import SamplingParams

    sampled = SamplingParams(temperature=0.7)
    check_sampling(["ar", "pld", "eagle2"], sampled)
    with pytest.raises(AlignspecError, match="greedy"):
        check_sampling(["ar", "aasd"], sampled)
    with pytest.raises(AlignspecError, match="peer 'hf-ar'"):
        check_sampling(["ar", "hf-ar"], sampled)
    check_sampling(["ar", "hf-ar", "aasd"], SamplingParams())


def test_each_prompt_starts_one_method_later(
    tiny_llm: LLM, tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No method always runs right after the same one: prompt i starts at method i mod M."""
    from alignspec.bench import runner

    order: list[str] = []
    real = runner.run_conversation

    def spy(backend, item, max_new_tokens):
        order.append(backend.name)
        return real(backend, item, max_new_tokens)

    monkeypatch.setattr(runner, "run_conversation", spy)
    run_bench(
        tiny_llm,
        "spec-bench",
        "ar,pld,pld-tree",
        data_dir=tiny_data_dir,
        max_new_tokens=4,
        warmup=0,
        output_dir=tmp_path,
        progress=False,
    )
    per_prompt = [order[i : i + 3] for i in range(0, len(order), 3)]
    assert len(per_prompt) >= 2
    for i, names in enumerate(per_prompt):
        start = ["ar", "pld", "pld-tree"][i % 3]
        assert names[0] == start and sorted(names) == ["ar", "pld", "pld-tree"]
