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
    real = features._run_target

    def counting(llm, ids, topk):
        calls.append(len(ids))
        return real(llm, ids, topk)

    monkeypatch.setattr(features, "_run_target", counting)
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
