"""Head configs read from transformers configs (Llama and Qwen2) and round-trip as dicts."""

from __future__ import annotations

import pytest
from transformers import Qwen2Config

from alignspec.errors import AlignspecError
from alignspec.heads.config import HeadConfig
from tests.conftest import make_tiny_llama


def test_for_target_reads_llama_dimensions():
    cfg = HeadConfig.for_target(make_tiny_llama().config, "fspad", draft_vocab_size=8)
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size) == (64, 128, 96)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (4, 2, 16)
    assert cfg.fs_intermediate_size == 128 and cfg.draft_vocab_size == 8
    assert not cfg.attention_bias
    assert HeadConfig.from_dict(cfg.to_dict()) == cfg


def test_qwen2_gets_attention_bias_and_its_rope_base():
    qwen = Qwen2Config(
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=50,
        rope_theta=1e6,
    )
    cfg = HeadConfig.for_target(qwen, "eagle2")
    assert cfg.attention_bias and cfg.rope_theta == 1e6


def test_unknown_arch_is_a_user_error():
    with pytest.raises(AlignspecError, match="unknown head architecture 'medusa'"):
        HeadConfig.for_target(make_tiny_llama().config, "medusa")
