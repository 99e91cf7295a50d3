"""Self-distilled data on the tiny model: each reply is the target's own greedy answer to the
first user turn (left padding changes nothing; the engine generator writes exactly what plain
greedy decoding writes), order is kept, and the JSONL cache resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignspec.api import LLM
from alignspec.errors import AlignspecError
from alignspec.training.data import Conversation
from alignspec.training.selfdistill import first_turn, self_distill
from tests.training.conftest import make_conversations


def _greedy(llm: LLM, messages: list[dict], max_len: int) -> list[int]:
    """The target's greedy reply, one unpadded sequence at a time."""
    tok = llm.tokenizer
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tok(ids, add_special_tokens=False)["input_ids"]
    out: list[int] = []
    with torch.no_grad():
        while len(ids) + len(out) < max_len:
            logits = llm.model(torch.tensor([ids + out])).logits[0, -1]
            nxt = int(logits.argmax())
            if nxt == tok.eos_token_id:
                break
            out.append(nxt)
    return out


def test_replies_are_the_targets_greedy_answers(tiny_head_llm: LLM, tmp_path: Path) -> None:
    convs = make_conversations(7)
    path = tmp_path / "replies.jsonl"
    got = self_distill(
        tiny_head_llm, convs, path, max_len=40, generator="batched", batch_size=3,
        dtype=torch.float32, progress=False,
    )  # fmt: skip
    assert [c.id for c in got] == [c.id for c in convs if c.id in {g.id for g in got}]
    assert len(got) >= 5
    tok = tiny_head_llm.tokenizer
    for conv, orig in zip(got, [c for c in convs if c.id in {g.id for g in got}], strict=True):
        assert [m["role"] for m in conv.messages] == ["user", "assistant"]
        assert conv.messages[0] == orig.messages[0]  # the first user turn, not the later ones
        want = tok.decode(_greedy(tiny_head_llm, [conv.messages[0]], 40), skip_special_tokens=True)
        reply = conv.messages[1]["content"]
        # a batch stops at max_len minus its longest prompt: a prefix of the free-running answer
        assert want.startswith(reply) and len(reply.split()) >= len(want.split()) - 8
    assert len(path.read_text().splitlines()) == len(convs)


def test_the_cache_is_reused_and_a_cut_line_regenerated(
    tiny_head_llm: LLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    convs = make_conversations(4)
    path = tmp_path / "replies.jsonl"
    kw = {"max_len": 40, "batch_size": 2, "dtype": torch.float32, "progress": False}
    kw["generator"] = "batched"
    first = self_distill(tiny_head_llm, convs, path, **kw)
    lines = path.read_text().splitlines()
    cut = lines[-1]
    cut_id = json.loads(cut)["id"]
    path.write_text("\n".join(lines[:-1]) + "\n" + cut[: len(cut) // 2])  # an interrupted write
    calls = []
    real = type(tiny_head_llm.model).generate

    def counting(self, **inputs):
        calls.append(inputs["input_ids"].shape[0])
        return real(self, **inputs)

    monkeypatch.setattr(type(tiny_head_llm.model), "generate", counting)
    again = self_distill(tiny_head_llm, convs, path, **kw)
    assert calls == [1]  # only the conversation whose line was cut
    assert [c.id for c in again] == [c.id for c in first]
    kept = [c for c in again if c.id != cut_id]
    assert kept == [c for c in first if c.id != cut_id]  # read back, not generated again
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.startswith("{") and
            x.endswith("}")]  # fmt: skip
    assert {r["id"] for r in rows} == {c.id for c in convs}


def test_engine_replies_are_plain_greedy_decoding_and_resume(
    tiny_head_llm: LLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine generator decodes with a speculative method; its replies must be what ``ar``
    writes, token for token, each to its own ``max_len``, and a rerun generates only what is
    missing."""
    convs = make_conversations(5)
    path = tmp_path / "replies.jsonl"
    kw = {"max_len": 48, "generator": "engine", "progress": False}
    got = self_distill(tiny_head_llm, convs, path, **kw)
    assert len(got) >= 4
    tok = tiny_head_llm.tokenizer
    for conv in got:
        text = tok.apply_chat_template(
            [conv.messages[0]], tokenize=False, add_generation_prompt=True
        )
        ids = tok(text, add_special_tokens=False)["input_ids"]
        plain = tiny_head_llm.generate(prompt_ids=ids, method="ar", max_new_tokens=48 - len(ids))
        assert conv.messages[1]["content"] == plain.text.strip()
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:5])  # an interrupted write
    calls = []
    real = LLM.generate

    def counting(self, *args, **kwargs):
        calls.append(kwargs["method"])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LLM, "generate", counting)
    again = self_distill(tiny_head_llm, convs, path, **kw)
    assert calls == ["pld"] and again == got


def test_an_unknown_generator_is_one_sentence(tiny_head_llm: LLM, tmp_path: Path) -> None:
    with pytest.raises(AlignspecError, match="unknown reply generator 'fast'"):
        self_distill(tiny_head_llm, make_conversations(1), tmp_path / "r.jsonl", generator="fast")


def test_long_prompts_are_cut_and_a_system_message_kept(tiny_head_llm: LLM) -> None:
    words = " ".join(["cat"] * 50)
    conv = Conversation(
        "x",
        (
            {"role": "system", "content": "be happy"},
            {"role": "user", "content": words},
            {"role": "assistant", "content": "dog"},
        ),
    )
    msgs = first_turn(conv, tiny_head_llm.tokenizer, 8)
    assert msgs[0] == {"role": "system", "content": "be happy"}
    assert len(tiny_head_llm.tokenizer(msgs[1]["content"])["input_ids"]) == 8
