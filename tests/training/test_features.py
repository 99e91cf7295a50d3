"""Feature extraction on the tiny model: the shards hold exactly the target's final-norm
hidden states and top-K distribution, a rerun skips finished shards, and the token counts
pick the draft vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from alignspec.api import LLM
from alignspec.errors import AlignspecError
from alignspec.training import features
from alignspec.training.data import encode_conversation
from alignspec.training.features import FeatureStore, draft_vocabulary, extract_features
from tests.training.conftest import make_conversations


def test_shards_hold_the_targets_hidden_states_and_topk(
    tiny_head_llm: LLM, tiny_features: Path
) -> None:
    store = FeatureStore(tiny_features / "train")
    manifest = json.loads((tiny_features / "train" / "manifest.json").read_text())
    assert manifest["shards"] == [f"shard-{k:05d}.safetensors" for k in range(3)]  # 24 / 10
    assert manifest["topk"] == 8 and manifest["max_len"] == 64
    assert len(store) == manifest["sequences"] == 24
    assert int(store.lengths.sum()) == manifest["tokens"]
    convs = make_conversations(30)[:24]
    model = tiny_head_llm.model
    for i in (0, 13, 23):
        seq = store[i]
        enc = encode_conversation(tiny_head_llm.tokenizer, convs[i], 64)
        assert enc is not None
        assert seq.input_ids.tolist() == enc.input_ids
        assert seq.loss_mask.astype(bool).tolist() == enc.loss_mask
        with torch.no_grad():
            ids = torch.tensor([enc.input_ids])
            hidden = model.model(input_ids=ids).last_hidden_state[0]  # after the final norm
            probs = torch.softmax(model.lm_head(hidden).float(), -1)
        stored = torch.from_numpy(np.array(seq.hidden)).float()
        assert stored.dtype == torch.float32 and seq.hidden.dtype == np.float16
        torch.testing.assert_close(stored, hidden, atol=2e-3, rtol=2e-3)
        top_p, top_i = probs.topk(8, dim=-1)
        assert (torch.from_numpy(np.array(seq.topk_ids[:, 0])).long() == top_i[:, 0]).all()
        torch.testing.assert_close(
            torch.from_numpy(np.array(seq.topk_probs)).float(), top_p, atol=2e-3, rtol=0
        )


def test_rerun_skips_finished_shards(
    tiny_head_llm: LLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    convs = make_conversations(7, seed=3)
    common = {"topk": 4, "max_len": 48, "shard_size": 3, "progress": False}
    extract_features(tiny_head_llm, convs, tmp_path, **common)
    calls: list[int] = []
    real = features.target_features

    def counting(target, seqs, topk, pack_tokens=0):
        calls.extend(len(s) for s in seqs)
        return real(target, seqs, topk, pack_tokens)

    monkeypatch.setattr(features, "target_features", counting)
    extract_features(tiny_head_llm, convs, tmp_path, **common)
    assert calls == []  # everything was done
    (tmp_path / "shard-00001.safetensors").unlink()
    extract_features(tiny_head_llm, convs, tmp_path, **common)
    assert len(calls) == 3  # only the missing shard
    # growing the list recomputes only the last (partial) shard: conversations 6 and 7
    calls.clear()
    extract_features(tiny_head_llm, make_conversations(8, seed=3), tmp_path, **common)
    assert len(calls) == 2
    assert FeatureStore(tmp_path).manifest["sequences"] == 8
    # other settings make every shard stale
    calls.clear()
    extract_features(tiny_head_llm, convs, tmp_path, **{**common, "topk": 5})
    assert len(calls) == 7
    assert FeatureStore(tmp_path).topk == 5


def test_frequencies_and_draft_vocabulary(tiny_features: Path) -> None:
    store = FeatureStore(tiny_features / "train")
    freq = store.frequencies()
    assistant = sum(int(store[i].loss_mask.sum()) for i in range(len(store)))
    assert int(freq["assistant"].sum()) == assistant
    assert int(freq["top1"].sum()) > 0
    vocab = draft_vocabulary(freq, 10)
    assert len(vocab) == 10 and vocab.tolist() == sorted(vocab.tolist())
    counts = freq["assistant"] + freq["top1"]
    assert counts[vocab.numpy()].min() >= np.sort(counts)[-10]
    assert len(draft_vocabulary(freq, 0)) == len(counts)  # 0 = full vocabulary
    with pytest.raises(AlignspecError, match="no token frequencies"):
        FeatureStore(tiny_features / "eval").frequencies()


def test_bad_settings_are_user_errors(tiny_head_llm: LLM, tmp_path: Path) -> None:
    convs = make_conversations(2)
    with pytest.raises(AlignspecError):
        extract_features(tiny_head_llm, convs, tmp_path, topk=0)
    with pytest.raises(AlignspecError):
        extract_features(tiny_head_llm, [], tmp_path)
    with pytest.raises(AlignspecError, match="no extracted features"):
        FeatureStore(tmp_path / "nothing")


def test_an_interrupted_extraction_resumes_at_the_first_missing_shard(
    tiny_head_llm: LLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    convs = make_conversations(9, seed=4)
    common = {"topk": 4, "max_len": 48, "shard_size": 3, "progress": False}
    real = features.target_features
    calls: list[int] = []

    def dies_in_shard_2(target, seqs, topk, pack_tokens=0):
        if len(calls) >= 6:
            raise KeyboardInterrupt
        calls.extend(len(s) for s in seqs)
        return real(target, seqs, topk, pack_tokens)

    monkeypatch.setattr(features, "target_features", dies_in_shard_2)
    with pytest.raises(KeyboardInterrupt):
        extract_features(tiny_head_llm, convs, tmp_path, **common)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    ]  # finished shards are on disk, nothing half-written, no manifest yet
    calls.clear()
    monkeypatch.setattr(
        features, "target_features", lambda t, s, *a: calls.extend(s) or real(t, s, *a)
    )
    extract_features(tiny_head_llm, convs, tmp_path, **common)
    assert len(calls) == 3  # the last shard's three conversations only
    assert FeatureStore(tmp_path).manifest["sequences"] == 9


def test_packed_prefill_gives_the_one_by_one_features(tiny_head_llm: LLM) -> None:
    from alignspec.training.prefill import prefill_one, target_features

    torch.manual_seed(0)
    seqs = [torch.randint(3, 90, (n,)).tolist() for n in (7, 30, 12, 5, 40)]
    target = tiny_head_llm.target
    packed = target_features(target, seqs, 6, pack_tokens=50)  # groups (7, 30, 12), (5, 40)
    for seq, (hidden, ids, probs) in zip(seqs, packed, strict=True):
        ref_h, ref_i, ref_p = prefill_one(target, seq, 6)
        assert hidden.shape == (len(seq), 64) and ids.shape == (len(seq), 6)
        np.testing.assert_allclose(hidden.astype(np.float32), ref_h.astype(np.float32), atol=2e-3)
        assert (ids[:, 0] == ref_i[:, 0]).all()
        np.testing.assert_allclose(probs.astype(np.float32), ref_p.astype(np.float32), atol=2e-3)


def test_packed_extraction_writes_the_same_shards(tiny_head_llm: LLM, tmp_path: Path) -> None:
    convs = make_conversations(8, seed=5)
    common = {"topk": 4, "max_len": 48, "shard_size": 5, "progress": False}
    extract_features(tiny_head_llm, convs, tmp_path / "one", **common)
    extract_features(tiny_head_llm, convs, tmp_path / "packed", pack_tokens=120, **common)
    one, packed = FeatureStore(tmp_path / "one"), FeatureStore(tmp_path / "packed")
    assert len(one) == len(packed) == 8
    for i in range(8):
        a, b = one[i], packed[i]
        assert a.input_ids.tolist() == b.input_ids.tolist()
        assert a.loss_mask.tolist() == b.loss_mask.tolist()
        np.testing.assert_allclose(
            np.asarray(a.hidden, np.float32), np.asarray(b.hidden, np.float32), atol=2e-3
        )
        assert (np.asarray(a.topk_ids[:, 0]) == np.asarray(b.topk_ids[:, 0])).all()


def test_an_int8_target_gets_its_own_feature_cache(tiny_head_llm: LLM) -> None:
    int8 = LLM(tiny_head_llm.model, tiny_head_llm.tokenizer, quantize="int8")
    assert features.target_key(int8) != features.target_key(tiny_head_llm)
    again = LLM(tiny_head_llm.model, tiny_head_llm.tokenizer)
    assert features.target_key(again) == features.target_key(tiny_head_llm)
