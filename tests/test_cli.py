"""User mistakes end with one clear line and exit code 2 (checked in a real subprocess, so a
traceback anywhere would show up on stderr)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from alignspec.cli import main


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alignspec.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", ""], "the prompt is empty"),
        (["generate", "hi", "--max-new-tokens", "0"], "--max-new-tokens must be positive"),
        (["generate", "hi", "--method", "nope"], "unknown method 'nope'"),
        (["generate", "hi", "--model", "./no/such/model"], "does not exist"),
        (["generate", "hi", "--model", "missing.gguf"], "does not exist"),
        (["generate", "hi", "--method", "ar", "--draft-len", "3"], "does not take option"),
        (["generate", "hi", "--device", "cuda:7"], "no CUDA GPU"),
    ],
)
def test_user_errors_exit_2_with_one_line(args, message, capsys):
    # in-process: an exception escaping main() would fail the test with its traceback
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.strip().count("\n") == 0


def test_bad_flag_is_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "hi", "--max-new-tokens", "many"])
    assert exc.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


@pytest.mark.real
def test_prompt_longer_than_context_is_refused():
    res = cli("generate", "-", "--max-new-tokens", "4", stdin="word " * 9000)
    assert res.returncode == 2, res.stderr
    assert "exceeds the model's 8192-token context" in res.stderr
    assert "--truncate middle" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.real
def test_generate_streams_text_and_prints_stats():
    res = cli(
        "generate",
        "Summarize: The cat sat on the mat. The cat was happy on the mat.",
        "--method",
        "pld",
        "--max-new-tokens",
        "24",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip()
    assert "tokens/s=" in res.stderr and "tau=" in res.stderr and "rounds=" in res.stderr
