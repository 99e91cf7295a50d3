"""``export-head --format eagle``: the folder reloads into transformers' own Llama classes
(a ``LlamaDecoderLayer`` without its input norm after a Linear ``fc``) and reproduces the
head's outputs and draft logits on random inputs; the names and config are what vLLM/SGLang
read; fspad is refused in one sentence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from alignspec.cli import main
from alignspec.heads.config import HeadConfig
from alignspec.heads.io import load_head, save_head
from alignspec.heads.modules import FeatureHead
from tests.conftest import make_tiny_llama


def _head_file(tmp_path: Path, arch: str, **overrides: object) -> Path:
    torch.manual_seed(11)
    cfg = HeadConfig.for_target(make_tiny_llama().config, arch, **overrides)
    head = FeatureHead(cfg)
    with torch.no_grad():
        for p in head.parameters():  # non-trivial norms and biases too
            p.add_(0.05 * torch.randn_like(p))
    return save_head(head, tmp_path / f"{arch}.safetensors")


def _reload(folder: Path) -> tuple[LlamaConfig, torch.nn.Linear, LlamaDecoderLayer]:
    config = LlamaConfig.from_pretrained(folder)
    config._attn_implementation = "eager"
    state = load_file(str(folder / "model.safetensors"))
    h = config.hidden_size
    fc = torch.nn.Linear(2 * h, h, bias="fc.bias" in state)
    fc.load_state_dict({k[3:]: v.float() for k, v in state.items() if k.startswith("fc.")})
    layer = LlamaDecoderLayer(config, layer_idx=0)
    layer.input_layernorm = torch.nn.Identity()  # EAGLE's only layer has no input norm
    prefix = "layers.0."
    weights = {k[len(prefix) :]: v.float() for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = layer.load_state_dict(weights, strict=False)
    assert not unexpected and not missing
    return config, fc, layer.eval()


@pytest.mark.parametrize("attention_bias", [False, True])
def test_export_reloads_into_llama_layers_and_reproduces_the_head(
    tmp_path: Path, attention_bias: bool, capsys: pytest.CaptureFixture
) -> None:
    path = _head_file(tmp_path, "eagle2", attention_bias=attention_bias, rope_theta=5000.0)
    out = tmp_path / "eagle"
    assert (
        main(["export-head", "--format", "eagle", "--head", str(path), "--output", str(out)]) == 0
    )
    assert f"written to {out}" in capsys.readouterr().out
    raw = json.loads((out / "config.json").read_text())
    assert raw["architectures"] == ["LlamaForCausalLM"] and raw["num_hidden_layers"] == 1
    names = set(load_file(str(out / "model.safetensors")))
    assert {"fc.weight", "fc.bias", "layers.0.self_attn.q_proj.weight"} <= names
    assert {"layers.0.mlp.down_proj.weight", "layers.0.post_attention_layernorm.weight"} <= names
    assert not any("input_layernorm" in n or n.startswith("model.") for n in names)

    config, fc, layer = _reload(out)
    head = load_head(path)
    g = torch.Generator().manual_seed(2)
    e, f = torch.randn(2, 13, 64, generator=g), torch.randn(2, 13, 64, generator=g)
    positions = torch.arange(3, 16).expand(2, 13)
    causal = torch.full((13, 13), float("-inf")).triu(1)[None, None].expand(2, 1, 13, 13)
    with torch.no_grad():
        x = fc(torch.cat([e, f], dim=-1))
        rope = LlamaRotaryEmbedding(config)(x, positions)
        hf_out = layer(x, attention_mask=causal, position_ids=positions, position_embeddings=rope)
        hf_out = hf_out[0] if isinstance(hf_out, tuple) else hf_out
        predict, regress = head(e, f, positions)
    torch.testing.assert_close(hf_out, predict, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hf_out, regress, atol=1e-5, rtol=1e-5)
    lm = torch.randn(96, 64, generator=g)
    torch.testing.assert_close(hf_out @ lm.T, head.draft_logits(predict, lm), atol=1e-4, rtol=1e-5)


def test_fspad_has_no_eagle_layout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _head_file(tmp_path, "fspad")
    args = ["export-head", "--head", str(path), "--output", str(tmp_path / "x")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "only eagle2 heads" in err
