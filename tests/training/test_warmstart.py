"""Warm start: with ``init_from_target`` a fresh head's decoder layer equals the target's last
layer (no input norm; fspad's two down-projection halves both start from the target's), the
default stays random, and ``init_from`` continues from the given head file with its vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alignspec.api import LLM
from alignspec.errors import AlignspecError
from alignspec.heads.io import load_head, save_head
from alignspec.training.config import TrainConfig
from alignspec.training.layer_names import HEAD_TO_LLAMA_LAYER
from alignspec.training.loop import train
from alignspec.training.warmstart import FrozenTarget, build_head


def _target(llm: LLM) -> FrozenTarget:
    return FrozenTarget.from_model(llm.model, "tiny")


@pytest.mark.parametrize("arch", ["eagle2", "fspad"])
def test_head_layer_starts_as_the_targets_last_layer(tiny_head_llm: LLM, arch: str) -> None:
    target = _target(tiny_head_llm)
    head = build_head(target, TrainConfig(arch=arch, init_from_target=True), None)
    last = tiny_head_llm.model.model.layers[-1].state_dict()
    own = head.state_dict()
    copied = [m for m, t in HEAD_TO_LLAMA_LAYER.items() if m in own and t in last]
    assert len(copied) == 8  # q, k, v, o, post-attention norm, gate, up, down
    for mine in copied:
        theirs = last[HEAD_TO_LLAMA_LAYER[mine]]
        if arch == "fspad" and mine == "down_proj.weight":
            theirs = torch.cat([theirs, theirs])
        assert torch.equal(own[mine], theirs), mine
    assert not any("input_layernorm" in k for k in own)
    cold = build_head(target, TrainConfig(arch=arch), None)
    assert not torch.equal(cold.state_dict()["q_proj.weight"], last["self_attn.q_proj.weight"])


def test_init_from_continues_the_given_head(
    tiny_head_llm: LLM, tiny_features: Path, tmp_path: Path
) -> None:
    target = _target(tiny_head_llm)
    torch.manual_seed(5)
    given = build_head(target, TrainConfig(arch="eagle2"), None)
    given.set_draft_vocab(torch.arange(30))
    path = save_head(given, tmp_path / "given.safetensors")
    start = build_head(target, TrainConfig(arch="eagle2", init_from=str(path)), None)
    reference = load_head(path)
    for name, value in reference.state_dict().items():
        assert torch.equal(start.state_dict()[name], value), name
    with pytest.raises(AlignspecError, match="is a eagle2 head, not fspad"):
        build_head(target, TrainConfig(arch="fspad", init_from=str(path)), None)
    with pytest.raises(AlignspecError, match="no draft head file"):
        TrainConfig(init_from=str(tmp_path / "missing.safetensors"))
    cfg = TrainConfig(
        arch="eagle2", init_from=str(path), max_steps=2, batch_tokens=160, draft_vocab=40,
        unroll=2, save_every=0, progress=False, lr=1e-3,
    )  # fmt: skip
    result = train(target, tiny_features / "train", None, tmp_path / "run", cfg)
    trained = load_head(result.head_path)
    assert trained.draft_ids.tolist() == list(range(30))  # the given head's vocabulary
    assert not torch.equal(trained.state_dict()["fc.weight"], reference.state_dict()["fc.weight"])
