"""Fuzzing the edges: random prompts (text, bytes, lone surrogates, odd messages) and random
option values through the API and ``alignspec.cli.main``. Every call ends in one
AlignspecError sentence (exit code 2 on the CLI) or a valid result, never another exception.

The tiny LLM keeps a valid generation at milliseconds; the CLI's model loading is replaced by
it too, so only argument handling and generation are exercised.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import alignspec.cli
from alignspec.errors import AlignspecError
from alignspec.methods import REGISTRY

BOUNDED = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
#: options whose values name files or models: random values there would try to load things
LOADING_OPTIONS = {"head", "draft_model"}

surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1)
texts = st.one_of(st.text(max_size=40), surrogates, st.text(max_size=5).map(lambda s: s + "\udc80"))
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.one_of(
                st.sampled_from(["system", "user", "assistant", "tool", "wizard"]), st.integers()
            ),
            "content": st.one_of(texts, st.integers(), st.none()),
        }
    ),
    max_size=3,
)
prompts = st.one_of(texts, st.binary(max_size=20), messages, st.integers(), st.none())
scalars = st.one_of(
    st.integers(-3, 40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=6),
)


def option_values(method: str) -> st.SearchStrategy[dict]:
    """Random values for a random subset of ``method``'s options (plus, rarely, a bogus one)."""
    fields = [f for f in dataclasses.fields(REGISTRY[method].options)]
    strategies = {}
    for f in fields:
        if f.name in LOADING_OPTIONS:
            continue
        choices = f.metadata.get("choices")
        strategies[f.name] = st.one_of(scalars, st.sampled_from(choices)) if choices else scalars
    known = st.fixed_dictionaries({}, optional=strategies)
    bogus = st.dictionaries(st.sampled_from(["bogus", "draft_len"]), scalars, max_size=1)
    return st.one_of(known, known, bogus)


requests = st.sampled_from(sorted(REGISTRY)).flatmap(
    lambda m: st.fixed_dictionaries(
        {"method": st.just(m), "options": option_values(m)},
        optional={
            "max_new_tokens": st.one_of(st.integers(-2, 8), scalars),
            "stop": st.one_of(st.none(), texts, st.lists(st.one_of(texts, st.integers()))),
            "temperature": st.one_of(st.sampled_from([0.0, 0.7]), scalars),
            "top_p": scalars,
            "seed": st.one_of(st.integers(0, 10), scalars),
            "raw": st.one_of(st.booleans(), scalars),
        },
    )
)


def call(llm, prompt, req: dict):
    kwargs = {k: v for k, v in req.items() if k != "options"}
    kwargs.setdefault("max_new_tokens", 4)
    if isinstance(kwargs["max_new_tokens"], int) and kwargs["max_new_tokens"] > 8:
        kwargs["max_new_tokens"] = 8  # bound the runtime of valid calls
    return llm.generate(prompt, **kwargs, **req["options"])


def check_outcome(llm, prompt, req: dict) -> None:
    try:
        out = call(llm, prompt, req)
    except AlignspecError as exc:
        message = str(exc)
        assert message and "\n" not in message, message
        return
    budget = req.get("max_new_tokens", 4)
    assert 1 <= len(out.token_ids) <= budget
    assert isinstance(out.text, str)
    out.text.encode("utf-8")  # the output is always valid text
    assert out.finish_reason in ("stop", "length")


@BOUNDED
@given(prompt=prompts)
def test_random_prompts_give_a_sentence_or_a_result(tiny_bpe_llm, prompt):
    check_outcome(tiny_bpe_llm, prompt, {"method": "ar", "options": {}})


@BOUNDED
@given(prompt=st.one_of(st.text(min_size=1, max_size=30), prompts), req=requests)
def test_random_options_give_a_sentence_or_a_result(tiny_bpe_llm, prompt, req):
    check_outcome(tiny_bpe_llm, prompt, req)


@BOUNDED
@given(
    ids=st.one_of(
        st.lists(st.integers(-5, 60_000), max_size=8),
        st.lists(scalars, max_size=4),
        scalars,
        st.binary(max_size=4),
    )
)
def test_random_prompt_ids_give_a_sentence_or_a_result(tiny_bpe_llm, ids):
    try:
        out = tiny_bpe_llm.generate(prompt_ids=ids, max_new_tokens=3)
    except AlignspecError as exc:
        assert "\n" not in str(exc)
        return
    assert out.prompt_ids == list(ids) and len(out.token_ids) == 3


# ---------------------------------------------------------------------- the CLI
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


OPTION_FLAGS = sorted(
    {_flag(f.name) for m in REGISTRY.values() for f in dataclasses.fields(m.options)}
    - {"--head", "--draft-model"}
)
argv_values = st.one_of(
    st.integers(-3, 40).map(str),
    st.sampled_from(["nan", "inf", "-0.5", "0.1", "1e9", "", "x", "leaf", "exact", "entropy"]),
    texts,
)
argvs = st.builds(
    lambda prompt, method, pairs, extra: [
        "generate",
        prompt,
        "--method",
        method,
        *[tok for pair in pairs for tok in pair],
        *extra,
    ],
    prompt=st.one_of(texts, st.just("hello there")),
    method=st.one_of(st.sampled_from(sorted(REGISTRY)), texts),
    pairs=st.lists(
        st.tuples(
            st.sampled_from([*OPTION_FLAGS, "--max-new-tokens", "--stop", "--temperature"]),
            argv_values,
        ),
        max_size=3,
    ),
    extra=st.lists(st.sampled_from(["--raw", "--tree", "--no-alignment", "--bogus"]), max_size=1),
)


@BOUNDED
@given(argv=argvs)
def test_random_command_lines_exit_0_or_2_with_one_line(tiny_bpe_llm, monkeypatch, capsys, argv):
    monkeypatch.setattr(alignspec.cli, "load_from_args", lambda args: tiny_bpe_llm)
    if "--max-new-tokens" not in argv:
        argv = [*argv, "--max-new-tokens", "4"]
    else:  # bound the runtime: a big valid budget becomes 8
        i = argv.index("--max-new-tokens") + 1
        if argv[i].isdigit() and int(argv[i]) > 8:
            argv[i] = "8"
    try:
        code = alignspec.cli.main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        assert exc.code == 2
        capsys.readouterr()
        return
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2:
        assert err.startswith("alignspec: error: ") and err.strip().count("\n") == 0, err
    else:
        assert "finish=" in err


@pytest.mark.parametrize("raw", [b"\xff\xfe\x00", b"ok \xed\xa0\x80 surrogate", b"\xc3"])
def test_bytes_on_stdin_exit_2_in_process(tiny_bpe_llm, monkeypatch, capsys, raw):
    import io
    import sys

    monkeypatch.setattr(alignspec.cli, "load_from_args", lambda args: tiny_bpe_llm)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    assert alignspec.cli.main(["generate", "-", "--max-new-tokens", "3"]) == 2
    assert "not valid UTF-8" in capsys.readouterr().err
