"""``alignspec serve`` refuses bad flags in one line before it loads the model."""

from __future__ import annotations

import pytest

from alignspec.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--method", "nope"], "unknown method 'nope'"),
        (["serve", "--method", "ar", "--draft-len", "3"], "does not take option"),
        (["serve", "--method", "aasd", "--temperature", "0.5"], "greedy-only"),
        (["serve", "--max-queue", "0"], "--max-queue must be at least 1"),
        (["serve", "--port", "70000"], "--port must be in 1..65535"),
        (["serve", "--model", "./no/such/model"], "does not exist"),
    ],
)
def test_bad_serve_flags_exit_2_with_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.strip().count("\n") == 0


def test_serve_help_lists_server_and_method_flags(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--max-queue", "--method", "--draft-len", "--temperature"):
        assert flag in out
