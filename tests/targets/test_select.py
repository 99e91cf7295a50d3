"""make_target: auto picks native for supported architectures and falls back to transformers
otherwise; explicit requests that cannot be honoured are one-sentence user errors."""

from __future__ import annotations

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from alignspec.errors import AlignspecError
from alignspec.targets.hf import HFTarget
from alignspec.targets.native import NativeTarget, UnsupportedModelError
from alignspec.targets.select import make_target


@pytest.fixture(scope="module")
def tiny_gpt2() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).eval()


def test_auto_picks_native_for_llama_and_hf_otherwise(tiny_llama, tiny_gpt2):
    assert isinstance(make_target(tiny_llama), NativeTarget)
    assert isinstance(make_target(tiny_gpt2), HFTarget)


def test_explicit_backends(tiny_llama):
    assert isinstance(make_target(tiny_llama, "hf"), HFTarget)
    target = make_target(tiny_llama, "native", "int8")
    assert isinstance(target, NativeTarget) and target.quantize == "int8"
    assert make_target(tiny_llama, "auto", "none").quantize is None


@pytest.mark.parametrize(
    ("backend", "quantize", "message"),
    [
        ("hf", "int8", "int8 quantization needs the native backend"),
        ("fast", None, "unknown backend 'fast'"),
        ("auto", "int4", "unknown quantization 'int4'"),
    ],
)
def test_bad_requests_are_user_errors(tiny_llama, backend, quantize, message):
    with pytest.raises(AlignspecError, match=message) as err:
        make_target(tiny_llama, backend, quantize)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("backend", "quantize"), [("native", None), ("auto", "int8")])
def test_unsupported_model_cannot_be_forced_native(tiny_gpt2, backend, quantize):
    with pytest.raises(UnsupportedModelError, match="native backend runs"):
        make_target(tiny_gpt2, backend, quantize)


def test_llm_uses_the_requested_backend(tiny_llama):
    from alignspec.api import LLM
    from tests.bench.conftest import make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    assert isinstance(LLM(tiny_llama, tok).target, NativeTarget)
    assert isinstance(LLM(tiny_llama, tok, backend="hf").target, HFTarget)


def test_load_checks_the_backend_before_reading_weights():
    import alignspec

    # the model path does not exist: the backend error must come first
    with pytest.raises(AlignspecError, match="unknown backend 'fast'"):
        alignspec.load("/nonexistent/model", backend="fast")
