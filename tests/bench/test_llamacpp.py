"""llama.cpp peers: skipped with one line when llama-cpp-python is absent (CI), refused on a
non-GGUF target, given pld's settings; with the package (marked real): the GGUF tokenizer
gives alignspec's ids, and a tiny run writes records for both peers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignspec.bench import llamacpp
from alignspec.bench.backends import check_options, known_methods
from alignspec.cli import main
from alignspec.errors import AlignspecError
from alignspec.loading import ModelSource


@pytest.fixture
def absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llamacpp, "available", lambda: False)


def test_peers_are_known_methods() -> None:
    assert {"llamacpp-ar", "llamacpp-pld"} <= set(known_methods())


def test_absent_package_skips_with_one_line(absent: None) -> None:
    kept, message = llamacpp.split_available(["ar", "llamacpp-ar", "pld", "llamacpp-pld"], "ar")
    assert kept == ["ar", "pld"]
    assert message is not None and "\n" not in message
    assert message.startswith("skipping llamacpp-ar, llamacpp-pld: llama-cpp-python is not")
    assert "pip install llama-cpp-python==0.3.36" in message and "20 min" in message
    assert llamacpp.split_available(["ar", "pld"], "ar") == (["ar", "pld"], None)
    with pytest.raises(AlignspecError, match="baseline llamacpp-ar needs llama-cpp-python"):
        llamacpp.split_available(["llamacpp-ar", "ar"], "llamacpp-ar")


def test_bench_skips_the_absent_peer_and_runs_the_rest(
    absent: None,
    tiny_model_dir: Path,
    tiny_data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "bench",
            "--suite",
            "spec-bench",
            "--methods",
            "ar,llamacpp-ar,llamacpp-pld",
            "--model",
            str(tiny_model_dir),  # not a GGUF: fine, because the peers are skipped first
            "--device",
            "cpu",
            "--data-dir",
            str(tiny_data_dir),
            "--limit",
            "1",
            "--max-new-tokens",
            "3",
            "--warmup",
            "0",
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert (
        sum(line.startswith("skipping llamacpp-ar, llamacpp-pld:") for line in printed.split("\n"))
        == 1
    )
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["ar.jsonl"]


def test_non_gguf_target_is_refused() -> None:
    llamacpp.check_model(["ar"], None)  # no llama.cpp peer: nothing to check
    with pytest.raises(AlignspecError, match=r"pass --model default or a \.gguf file"):
        llamacpp.check_model(["ar", "llamacpp-ar"], ModelSource("dir", "/models/x", "x"))
    with pytest.raises(AlignspecError, match="llamacpp-pld runs the GGUF file"):
        llamacpp.check_model(["llamacpp-pld"], None)
    llamacpp.check_model(["llamacpp-ar"], ModelSource("gguf", "/m.gguf", "m"))


def test_non_gguf_target_fails_before_loading(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(llamacpp, "available", lambda: True)
    code = main(
        [
            "bench",
            "--suite",
            "spec-bench",
            "--methods",
            "ar,llamacpp-ar",
            "--model",
            str(tiny_model_dir),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "llamacpp-ar runs the GGUF file" in err and err.strip().count("\n") == 0


def test_pld_settings_follow_alignspec_pld() -> None:
    assert llamacpp.lookup_settings({}) == {"num_pred_tokens": 10, "max_ngram_size": 3}
    given = {"draft_len": 5, "max_ngram": 2}
    assert llamacpp.lookup_settings(given) == {"num_pred_tokens": 5, "max_ngram_size": 2}
    check_options(["ar", "llamacpp-pld"], given, None)  # taken by llamacpp-pld alone
    with pytest.raises(AlignspecError, match="not taken"):
        check_options(["ar", "llamacpp-ar"], {"draft_len": 5}, None)


# ----------------------------------------------------------------------------- with the package


@pytest.mark.real
def test_gguf_tokenizer_gives_alignspec_ids(real_llm) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    from alignspec.prompting import encode_prompt

    vocab_only = llama_cpp.Llama(
        model_path=real_llm.source.location, vocab_only=True, verbose=False
    )
    messages = [{"role": "user", "content": "Hello, world! def f(x):\n    return x + 1  # café 42"}]
    text = real_llm.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    ids = vocab_only.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    assert ids == encode_prompt(real_llm.tokenizer, messages)
    assert vocab_only.n_vocab() == real_llm.target.vocab_size


@pytest.mark.real
def test_tiny_run_with_both_peers(real_llm, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    from alignspec.bench.datasets import BenchItem
    from alignspec.bench.runner import run_bench

    items = [
        BenchItem(1, "chat", "chat", ["Name three colours.", "And three more?"], max_new_tokens=8),
    ]
    run_bench(
        real_llm,
        items,
        "ar,llamacpp-ar,llamacpp-pld",
        max_new_tokens=8,
        warmup=0,
        output_dir=tmp_path,
        progress=False,
    )
    results = json.loads((tmp_path / "results.json").read_text())
    peers = results["environment"]["llamacpp"]["peers"]
    assert peers["llamacpp-pld"]["num_pred_tokens"] == 10
    for name in ("llamacpp-ar", "llamacpp-pld"):
        (record,) = [
            json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()
        ]
        choice = record["choices"][0]
        assert len(choice["token_ids"]) == 2  # two turns, one conversation
        for ids, new, passes in zip(
            choice["token_ids"], choice["new_tokens"], choice["forward_passes"], strict=True
        ):
            assert 1 <= new == len(ids) <= 8 and 1 <= passes <= new
        assert all(t > 0 for t in choice["wall_time"])
    # tokens are reported against ar, not asserted equal: llama.cpp's quantised kernels
    # can part from ar's fp32 at a near-tie (results.json's "divergences" says where)
    assert set(results["divergences"]) == {"llamacpp-ar", "llamacpp-pld"}
