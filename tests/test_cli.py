"""User mistakes end with one clear line and exit code 2 (checked in a real subprocess, so a
traceback anywhere would show up on stderr)."""

from __future__ import annotations

import io
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
        # a value echoed in the message keeps it one line (found by test_fuzz)
        (["generate", "hi", "--method", "\n"], "unknown method '\\n'"),
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


def one_line_exit_2(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("alignspec: error: ") and err.strip().count("\n") == 0, err
    return err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "caf\udce9"], "argument 2 ('caf\\udce9') is not valid UTF-8 text"),
        (["generate", "lone \ud800"], "argument 2 ('lone \\ud800') is not valid UTF-8"),
        (["generate", "hi", "--stop", "x\udcff"], "argument 4 ('x\\udcff') is not valid"),
        (["generate", "hi", "--method", "aasd", "--siblings", "\udcff"], "argument 6"),
        (["generate", "hi", "--method", "aasd", "--alignment", "\ud800"], "argument 6"),
        (["generate", "hi", "--method", "aasd", "--tau", "nan"], "tau must be a finite number"),
        (["generate", "hi", "--method", "aasd", "--tau", "-5"], "tau must be a finite number"),
        (["generate", "hi", "--method", "aasd", "--siblings", "both"], "siblings must be one"),
        (["generate", "hi", "--method", "pld", "--draft-len", "0"], "draft_len must be an int"),
        (["generate", "hi", "--method", "eagle2", "--total-tokens", "1"], "total_tokens must"),
        (["generate", "hi", "--temperature", "nan"], "temperature must be a finite number"),
    ],
)
def test_bad_text_and_option_values_exit_2_with_one_line(args, message, capsys):
    assert message in one_line_exit_2(args, capsys)


def test_invalid_utf8_on_stdin_is_one_line_in_process(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"ok \xff\xfe bad")))
    err = one_line_exit_2(["generate", "-"], capsys)
    assert "the prompt on stdin is not valid UTF-8 (byte 0xff at offset 3)" in err


def test_bench_output_naming_an_existing_file_is_one_line(tmp_path, capsys):
    taken = tmp_path / "results.txt"
    taken.write_text("keep me")
    for output in (taken, taken / "sub"):
        err = one_line_exit_2(["bench", "--suite", "spec-bench", "--output", str(output)], capsys)
        assert "is an existing file, not a folder" in err
    assert taken.read_text() == "keep me"


def test_invalid_utf8_bytes_in_a_real_process_exit_2_without_traceback():
    """Real bytes, as a shell passes them: argv is decoded with surrogateescape, stdin is
    read as bytes; neither may reach the tokenizer."""
    base = [sys.executable, "-m", "alignspec"]
    runs = [
        subprocess.run([*base, "generate", b"caf\xe9"], capture_output=True, timeout=300),
        subprocess.run(
            [*base, "generate", "-"], input=b"\xc3\x28 broken", capture_output=True, timeout=300
        ),
    ]
    for res in runs:
        err = res.stderr.decode("utf-8", "replace")
        assert res.returncode == 2, err
        assert "Traceback" not in err and err.strip().count("\n") == 0, err
        assert "not valid UTF-8" in err
