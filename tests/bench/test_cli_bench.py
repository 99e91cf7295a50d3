"""``alignspec bench`` through the real entry point: a tiny end-to-end run, the quick preset,
and user mistakes ending in one line and exit code 2 before any model loads."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from alignspec.bench.cli import resolve_settings
from alignspec.bench.runner import QUICK_PRESETS
from alignspec.cli import main


def test_bench_command_writes_the_results_folder(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "bench",
            "--suite",
            "spec-bench",
            "--methods",
            "pld,hf-ar",
            "--model",
            str(tiny_model_dir),
            "--device",
            "cpu",
            "--data-dir",
            str(tiny_data_dir),
            "--max-new-tokens",
            "6",
            "--warmup",
            "0",
            "--draft-len",
            "4",
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| ar | multi-turn |" in printed and "| hf-ar | overall |" in printed
    for name in ("ar.jsonl", "pld.jsonl", "hf-ar.jsonl", "results.json", "results.md"):
        assert (out / name).is_file(), name
    assert (out / "speedup.png").stat().st_size > 0 and (out / "tau.png").stat().st_size > 0


def _args(**given: object) -> argparse.Namespace:
    base = {"suite": "spec-bench", "quick": True, "limit": None, "max_new_tokens": None}
    base.update(warmup=None, repeats=None, max_prompt_tokens=None)
    base.update(given)
    return argparse.Namespace(**base)


def test_quick_preset_and_explicit_flags_win() -> None:
    preset = QUICK_PRESETS["spec-bench"]
    assert resolve_settings(_args()) == {
        "limit": preset.limit,
        "max_new_tokens": preset.max_new_tokens,
        "warmup": preset.warmup,
        "repeats": preset.repeats,
        "max_prompt_tokens": None,
    }
    assert resolve_settings(_args(limit=5))["limit"] == 5
    assert resolve_settings(_args(max_prompt_tokens=512))["max_prompt_tokens"] == 512
    plain = resolve_settings(_args(quick=False))
    assert plain == {
        "limit": None,
        "max_new_tokens": None,
        "warmup": 1,
        "repeats": 1,
        "max_prompt_tokens": None,
    }
    assert set(QUICK_PRESETS) == {"spec-bench", "multi-news", "humaneval", "lcc"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--suite", "mt-bench"], "unknown suite 'mt-bench'"),
        (["--suite", "spec-bench", "--methods", "ar,nope"], "unknown method 'nope'"),
        (["--suite", "spec-bench", "--baseline", "nope"], "unknown method 'nope'"),
        (["--suite", "spec-bench", "--limit", "0"], "--limit must be"),
        (["--suite", "spec-bench", "--repeats", "0"], "--repeats must be"),
        (["--suite", "spec-bench", "--max-new-tokens", "-3"], "--max-new-tokens must be"),
        (["--suite", "spec-bench", "--methods", "ar,hf-assisted"], "needs a draft model"),
        (["--suite", "spec-bench", "--methods", "ar", "--draft-len", "3"], "not taken"),
        (["--suite", "spec-bench", "--methods", "aasd", "--temperature", "1"], "greedy-only"),
        (["--suite", "spec-bench", "--methods", "hf-ar", "--temperature", "1"], "peer 'hf-ar'"),
        (["--suite", "spec-bench", "--temperature", "-1"], "temperature must be"),
    ],
)
def test_user_errors_exit_2_with_one_line(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["bench", *extra, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("alignspec: error:")
    assert err.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()


def test_missing_data_dir_names_the_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nowhere"
    code = main(["bench", "--suite", "spec-bench", "--data-dir", str(missing)])
    assert code == 2
    err = capsys.readouterr().err
    assert str(missing / "spec_bench" / "question.jsonl") in err and "--data-dir" in err
