"""Head training on the tiny model's cached features: the noise formula, length-grouped
batches, the counted pairs, a few steps lowering the loss, outputs, and a resumed run that
ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from alignspec.api import LLM
from alignspec.errors import AlignspecError
from alignspec.training import loop as train_mod
from alignspec.training.batching import collate, feature_noise, group_batches
from alignspec.training.config import TrainConfig
from alignspec.training.features import FeatureStore
from alignspec.training.loop import train
from alignspec.training.loss import batch_loss
from alignspec.training.warmstart import FrozenTarget, build_head


def _cfg(**given: object) -> TrainConfig:
    base = {
        "arch": "fspad",
        "lr": 3e-3,
        "epochs": 2,
        "batch_tokens": 160,
        "draft_vocab": 40,
        "log_every": 1,
        "save_every": 0,
        "progress": False,
        "unroll": 1,
    }
    base.update(given)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _frozen(llm: LLM) -> FrozenTarget:
    return FrozenTarget.from_model(llm.model, "tiny")


def test_noise_follows_the_eagle_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    noise = feature_noise(torch.zeros(2, 5000, 4), torch.tensor([512, 1024]), 0.2, gen)
    # (U(0,1) - 0.5) * 0.2 * 512 / seq_len: uniform on [-0.1, 0.1] for 512, half that for 1024
    for row, half in ((0, 0.1), (1, 0.05)):
        assert 0.99 * half < float(noise[row].abs().max()) <= half
        assert abs(float(noise[row].std()) - half / math.sqrt(3)) < 0.02 * half
    assert abs(float(noise.mean())) < 2e-3
    gen = torch.Generator().manual_seed(0)
    again = feature_noise(torch.zeros(2, 5000, 4), torch.tensor([512, 1024]), 0.2, gen)
    assert torch.equal(noise, again)


def test_batches_group_lengths_within_the_token_budget() -> None:
    lengths = np.array([2, 11, 51, 51, 31, 201, 40, 12])
    batches = group_batches(lengths, batch_tokens=100, seed=0)
    flat = sorted(i for b in batches for i in b)
    assert flat == [1, 2, 3, 4, 5, 6, 7]  # length 2 has no counted pair (needs t_{i+2})
    for b in batches:
        width = max(lengths[i] - 1 for i in b)
        assert len(b) == 1 or len(b) * width <= 100
    assert group_batches(lengths, 100, seed=0) == batches


def test_loss_counts_pairs_whose_next_token_is_an_assistant_token(
    tiny_head_llm: LLM, tiny_features: Path
) -> None:
    store = FeatureStore(tiny_features / "train")
    target = _frozen(tiny_head_llm)
    head = build_head(target, _cfg(draft_vocab=0), None)
    batch = collate(store, [0, 5, 9])
    assert batch["hidden"].shape[1] == max(len(store[i].input_ids) for i in (0, 5, 9))
    parts = batch_loss(head, batch, target.embed_weight, target.lm_head_weight, None)
    expected = sum(int(store[i].loss_mask[2:].sum()) for i in (0, 5, 9))
    assert parts.count == expected > 0
    assert 0 <= parts.correct <= parts.count
    assert torch.isfinite(parts.loss) and parts.loss.requires_grad


def test_a_few_steps_lower_the_loss_and_write_the_outputs(
    tiny_head_llm: LLM, tiny_features: Path, tmp_path: Path
) -> None:
    from alignspec.heads.io import load_head, read_config

    result = train(
        _frozen(tiny_head_llm),
        tiny_features / "train",
        tiny_features / "eval",
        tmp_path / "run",
        _cfg(epochs=4),
    )
    hist = result.history
    losses = [row["loss"] for row in hist["train"]]
    assert len(losses) == result.steps
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    evals = hist["eval"]
    assert len(evals) == 4 and evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert {"step", "loss", "acc", "lr", "tokens_per_s"} <= set(hist["train"][0])
    saved = json.loads((tmp_path / "run" / "history.json").read_text())
    assert saved["train"] == hist["train"] and saved["config"]["arch"] == "fspad"
    assert (tmp_path / "run" / "training_curve.png").stat().st_size > 1000
    cfg = tiny_head_llm.model.config
    head = load_head(result.head_path, hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size)
    assert len(head.draft_ids) == 40 and head.cfg.arch == "fspad"
    _, meta = read_config(result.head_path)
    assert meta["trained_steps"] == str(result.steps)


def test_resume_continues_exactly_where_it_stopped(
    tiny_head_llm: LLM, tiny_features: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _frozen(tiny_head_llm)
    args = (target, tiny_features / "train", None)
    cfg = _cfg(epochs=3, save_every=4, unroll=2, init_from_target=True)  # 6 batches per epoch
    full = train(*args, tmp_path / "full", cfg)

    real = train_mod.batch_loss
    calls = {"n": 0}

    def dies_at_step_11(*a: object, **k: object):
        calls["n"] += 1
        if calls["n"] == 11:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "batch_loss", dies_at_step_11)
    with pytest.raises(KeyboardInterrupt):
        train(*args, tmp_path / "cut", cfg)
    monkeypatch.setattr(train_mod, "batch_loss", real)
    ckpts = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert ckpts == ["step-0000006", "step-0000008"]  # 8: in the middle of epoch 2
    with pytest.raises(AlignspecError, match="--resume"):
        train(*args, tmp_path / "cut", cfg)
    resumed = train(*args, tmp_path / "cut", cfg, resume=True)
    assert resumed.steps == full.steps
    assert [r["step"] for r in resumed.history["train"]] == list(range(1, full.steps + 1))
    w_full = _head_tensors(full.head_path)
    w_resumed = _head_tensors(resumed.head_path)
    assert w_full.keys() == w_resumed.keys()
    for name in w_full:
        torch.testing.assert_close(w_resumed[name], w_full[name], atol=0, rtol=0)


def _head_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_config_errors_are_one_sentence() -> None:
    with pytest.raises(AlignspecError, match="eagle2 or fspad"):
        TrainConfig(arch="medusa")
    with pytest.raises(AlignspecError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(AlignspecError, match="draft vocabulary"):
        TrainConfig(draft_vocab=-1)
    with pytest.raises(AlignspecError, match="loss weights"):
        TrainConfig(p_weight=-1.0)
    with pytest.raises(AlignspecError, match="loss weights"):
        TrainConfig(p_weight=0.0, v_weight=0.0)
    assert TrainConfig(arch="eagle2").learning_rate == 3e-5
    assert TrainConfig(arch="fspad").learning_rate == 5e-5
    assert TrainConfig(arch="fspad", lr=1e-3).learning_rate == 1e-3


@pytest.mark.parametrize("arch", ["eagle2", "fspad"])
def test_unrolled_run_reports_top1_per_step(
    arch: str, tiny_head_llm: LLM, tiny_features: Path, tmp_path: Path
) -> None:
    result = train(
        _frozen(tiny_head_llm),
        tiny_features / "train",
        tiny_features / "eval",
        tmp_path / "run",
        _cfg(arch=arch, epochs=1, unroll=3),
    )
    ev = result.final_eval
    assert ev is not None and len(ev["eval_acc_steps"]) == 3 and len(ev["eval_loss_steps"]) == 3
    assert ev["eval_acc_steps"][0] == ev["eval_acc"]
    assert all(0 <= a <= 1 for a in ev["eval_acc_steps"])
    assert len(result.history["train"][0]["acc_steps"]) == 3
    saved = json.loads((tmp_path / "run" / "history.json").read_text())
    assert saved["eval"][-1]["eval_acc_steps"] == ev["eval_acc_steps"]
    from alignspec.heads.io import read_config

    _, meta = read_config(result.head_path)
    assert meta["unroll"] == "3" and len(meta["eval_top1_steps"].split(",")) == 3


def test_later_steps_count_only_rows_with_a_committed_prefix(
    tiny_head_llm: LLM, tiny_features: Path
) -> None:
    store = FeatureStore(tiny_features / "train")
    target = _frozen(tiny_head_llm)
    head = build_head(target, _cfg(draft_vocab=0), None)
    batch = collate(store, [0, 5, 9])
    parts = batch_loss(head, batch, target.embed_weight, target.lm_head_weight, None, unroll=3)
    counted = batch["counted"]
    expected = [int(counted[:, j:].sum()) for j in range(3)]  # step j + 1 needs i >= j
    assert [s.count for s in parts.steps] == expected
    assert torch.isfinite(parts.loss) and parts.loss.requires_grad


def test_a_saved_head_evaluates_as_its_run_did(
    tiny_head_llm: LLM, tiny_features: Path, tmp_path: Path
) -> None:
    from alignspec.training.evaluate import evaluate_file

    result = train(
        _frozen(tiny_head_llm),
        tiny_features / "train",
        tiny_features / "eval",
        tmp_path / "run",
        _cfg(arch="eagle2", epochs=1, unroll=2),
    )
    ev = result.final_eval
    row = evaluate_file(_frozen(tiny_head_llm), result.head_path, tiny_features / "eval", unroll=2)
    assert ev is not None and row["eval_pairs"] == ev["eval_pairs"]
    # the file holds bf16 weights: the same numbers up to that rounding
    assert row["eval_loss"] == pytest.approx(ev["eval_loss"], rel=0.05)
    for got, want in zip(row["eval_acc_steps"], ev["eval_acc_steps"], strict=True):
        assert abs(got - want) <= 0.05
