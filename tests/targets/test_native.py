"""The native target against transformers: logits of prefill, tree verification and the
forward after a compaction match the reference model; greedy decoding through the engine is
identical between backends; int8 is the model with int8-rounded weights and activation rows
and stays lossless."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from alignspec.drafters.base import Drafter, NoDrafter
from alignspec.drafters.prompt_lookup import PromptLookupConfig, PromptLookupDrafter
from alignspec.engine import Engine
from alignspec.errors import AlignspecError
from alignspec.stats import GenerationStats
from alignspec.targets.hf import HFTarget
from alignspec.targets.native import NativeTarget, UnsupportedModelError
from alignspec.targets.native import kv_cache as kv_cache_module
from alignspec.targets.native import target as target_module
from alignspec.targets.native.kv_cache import StaticKVCache
from alignspec.targets.native.quant import Int8Linear, quantize_rows
from alignspec.tree import DraftTree
from alignspec.verifiers.greedy import GreedyVerifier
from tests.conftest import TINY_DIMS, make_tiny_llama

ATOL = 1e-3
PROMPT = [1, 5, 9, 17, 33, 40, 41, 7, 8, 9]
TREE = DraftTree(tokens=[11, 12, 13, 21, 22, 31], parents=[0, 1, 2, 0, 4, 1])


def make_tiny_qwen2(seed: int = 0, vocab: int = 96) -> Qwen2ForCausalLM:
    """A 2-layer random Qwen2: q/k/v biases, tied embeddings, 4 query heads on 2 KV heads."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab,
        **TINY_DIMS,
        num_key_value_heads=2,
        initializer_range=0.3,
        tie_word_embeddings=True,
        rope_theta=10000.0,
    )
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # random init leaves biases at zero; make them matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model


def make_tiny_mistral(sliding_window: int | None) -> MistralForCausalLM:
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=96,
        **TINY_DIMS,
        num_key_value_heads=1,
        initializer_range=0.3,
        sliding_window=sliding_window,
    )
    return MistralForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tiny_qwen2() -> Qwen2ForCausalLM:
    return make_tiny_qwen2()


@pytest.fixture(params=["llama", "qwen2"])
def tiny_model(request, tiny_llama, tiny_qwen2):
    return tiny_llama if request.param == "llama" else tiny_qwen2


def full_logits(model, ids: list[int]) -> torch.Tensor:
    """Reference: one cache-free causal forward of transformers over the whole sequence."""
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].float()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ---------------------------------------------------------------------------- logits, tiny


def test_prefill_logits_topk_and_hidden_match(tiny_model):
    target = NativeTarget.from_hf(tiny_model)
    out = target.prefill(PROMPT, topk=3, want_hidden=True)
    ref = full_logits(tiny_model, PROMPT)
    assert max_diff(out.logits, ref[-1]) < ATOL
    assert torch.equal(out.topk_ids, torch.softmax(ref, -1).topk(3, -1).indices)
    with torch.inference_mode():
        hidden = tiny_model.model(torch.tensor([PROMPT])).last_hidden_state[0]
    assert max_diff(out.hidden, hidden) < ATOL
    assert target.cache_len == len(PROMPT)


def test_tree_rows_match_each_branch(tiny_model):
    target = NativeTarget.from_hf(tiny_model)
    target.prefill(PROMPT[:-1])
    out = target.verify(PROMPT[-1], TREE, want_hidden=True)
    assert out.logits.dense().shape == (TREE.num_rows, tiny_model.config.vocab_size)
    assert out.hidden.shape == (TREE.num_rows, tiny_model.config.hidden_size)
    for row in range(TREE.num_rows):
        seq = PROMPT + [TREE.tokens[r - 1] for r in TREE.path_to(row)[1:]]
        assert max_diff(out.logits.row(row), full_logits(tiny_model, seq)[-1]) < ATOL, f"row {row}"


def test_commit_of_a_later_branch_then_next_forward(tiny_model):
    target = NativeTarget.from_hf(tiny_model)
    target.prefill(PROMPT[:-1])
    target.verify(PROMPT[-1], TREE)
    target.commit([0, 4, 5])  # root -> 21 -> 22: the second branch, rows not a prefix
    assert target.cache_len == len(PROMPT) + 2
    nxt = target.verify(50, DraftTree(tokens=[51, 52, 53], parents=[0, 0, 2]))
    ref = full_logits(tiny_model, [*PROMPT, 21, 22, 50, 51])
    assert max_diff(nxt.logits.dense()[:2], ref[-2:]) < ATOL
    ref_b = full_logits(tiny_model, [*PROMPT, 21, 22, 50, 52, 53])
    assert max_diff(nxt.logits.dense()[2:], ref_b[-2:]) < ATOL


def test_commit_prefix_and_empty_tree(tiny_llama):
    target = NativeTarget.from_hf(tiny_llama)
    target.prefill(PROMPT[:-1])
    target.verify(PROMPT[-1], DraftTree.chain([11, 12, 13]))
    target.commit([0, 1])
    nxt = target.verify(60, DraftTree())
    assert max_diff(nxt.logits.dense()[0], full_logits(tiny_llama, [*PROMPT, 11, 60])[-1]) < ATOL


def test_chunked_prefill_and_cache_growth(tiny_llama, monkeypatch):
    monkeypatch.setattr(target_module, "PREFILL_CHUNK", 4)
    monkeypatch.setattr(target_module, "TOPK_ROWS", 3)
    monkeypatch.setattr(kv_cache_module, "BLOCK", 8)
    target = NativeTarget.from_hf(tiny_llama)
    assert target.cache.capacity == 8
    ids = [(7 * i + 3) % 96 for i in range(30)]
    out = target.prefill(ids, topk=2)
    ref = full_logits(tiny_llama, ids)
    assert target.cache.capacity >= 30
    assert max_diff(out.logits, ref[-1]) < ATOL
    assert torch.equal(out.topk_ids, ref.topk(2, -1).indices)
    target.verify(4, DraftTree.chain([5, 6]))
    target.commit([0, 1, 2])
    nxt = target.verify(8, DraftTree())
    assert max_diff(nxt.logits.dense()[0], full_logits(tiny_llama, [*ids, 4, 5, 6, 8])[-1]) < ATOL


def test_reset_between_requests(tiny_llama):
    target = NativeTarget.from_hf(tiny_llama)
    target.prefill([1, 2, 3, 4, 5, 6, 7, 8])
    target.verify(9, DraftTree.chain([10]))
    target.commit([0, 1])
    out = target.prefill(PROMPT)
    assert target.cache_len == len(PROMPT)
    assert max_diff(out.logits, full_logits(tiny_llama, PROMPT)[-1]) < ATOL


def test_context_overflow_is_a_user_error(tiny_llama):
    target = NativeTarget.from_hf(tiny_llama)
    target.prefill([i % 90 + 3 for i in range(250)])
    with pytest.raises(AlignspecError, match="context of 256"):
        target.verify(3, DraftTree.chain(list(range(10, 20))))


# ---------------------------------------------------------------------------- architectures


def test_mistral_without_window_runs_and_with_short_window_is_refused():
    model = make_tiny_mistral(sliding_window=None)
    out = NativeTarget.from_hf(model).prefill(PROMPT)
    assert max_diff(out.logits, full_logits(model, PROMPT)[-1]) < ATOL
    with pytest.raises(UnsupportedModelError, match="sliding window"):
        NativeTarget.from_hf(make_tiny_mistral(sliding_window=64))


ROPE_VARIANTS = {
    "linear": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
        "rope_theta": 500000.0,
    },
    "yarn": {
        "rope_type": "yarn",
        "factor": 4.0,
        "rope_theta": 10000.0,
        "original_max_position_embeddings": 64,
    },
}


def tiny_llama_with_rope(rope: dict) -> LlamaForCausalLM:
    return make_tiny_llama(rope_parameters=rope)


@pytest.mark.parametrize("kind", ROPE_VARIANTS)
def test_scaled_rope_variants_match(kind):
    model = tiny_llama_with_rope(ROPE_VARIANTS[kind])
    ids = [(5 * i + 3) % 96 for i in range(90)]  # past YaRN/llama3's original 64 positions
    out = NativeTarget.from_hf(model).prefill(ids)
    assert max_diff(out.logits, full_logits(model, ids)[-1]) < ATOL


def test_sequence_dependent_rope_is_refused():
    model = tiny_llama_with_rope({"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    with pytest.raises(UnsupportedModelError, match="RoPE type 'dynamic'"):
        NativeTarget.from_hf(model)


def test_unsupported_architecture_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).eval()
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        NativeTarget.from_hf(model)


def test_unknown_quantization_is_refused(tiny_llama):
    with pytest.raises(AlignspecError, match="int4"):
        NativeTarget.from_hf(tiny_llama, quantize="int4")


# ---------------------------------------------------------------------------- int8


def fake_quantize_input(module, args):
    """Forward pre-hook: the input rounded per row, as the int8 kernels round activations."""
    q, scale = quantize_rows(args[0].float())
    return (q.float() * scale,)


def dequantized_copy(model):
    """The model whose every decoder projection and LM head holds int8-rounded weights and
    rounds its input rows to int8 (one scale per row)."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        linears = [m for m in ref.model.modules() if isinstance(m, torch.nn.Linear)]
        head = ref.get_output_embeddings()
        if head.weight is not ref.get_input_embeddings().weight:
            linears.append(head)
        else:  # tied: quantise a separate head so the input embedding stays fp32
            ref.lm_head.weight = torch.nn.Parameter(head.weight.detach().clone())
            linears.append(ref.lm_head)
        for lin in linears:
            lin.weight.copy_(Int8Linear(lin.weight).dequantized())
            lin.register_forward_pre_hook(fake_quantize_input)
    return ref


def test_int8_target_is_the_rounded_model(tiny_model):
    """The int8 model is fp32 arithmetic on rounded weights and rows (with fp32 keys and
    values: bf16's own deviation is measured below)."""
    target = NativeTarget.from_hf(tiny_model, quantize="int8", kv_bf16=False)
    ref_model = dequantized_copy(tiny_model)
    assert max_diff(target.prefill(PROMPT).logits, full_logits(ref_model, PROMPT)[-1]) < ATOL
    target.prefill(PROMPT[:-1])
    out = target.verify(PROMPT[-1], TREE)
    for row in range(TREE.num_rows):
        seq = PROMPT + [TREE.tokens[r - 1] for r in TREE.path_to(row)[1:]]
        assert max_diff(out.logits.dense()[row], full_logits(ref_model, seq)[-1]) < ATOL


def test_int8_tree_rows_are_bitwise_the_tokens_decoded_alone(tiny_model):
    """Lossless relative to int8 ``ar`` needs more than close logits: every tree row must come
    out bitwise as its path decoded one token at a time (int8 rounds every activation row)."""
    target = NativeTarget.from_hf(tiny_model, quantize="int8")
    prompt = [(7 * i + 3) % 96 for i in range(200)]
    target.prefill(prompt[:-1])
    tree_logits = target.verify(prompt[-1], TREE).logits.dense()
    for row in range(TREE.num_rows):
        target.prefill(prompt[:-1])
        tokens = [prompt[-1]] + [TREE.tokens[r - 1] for r in TREE.path_to(row)[1:]]
        for token in tokens:
            alone = target.verify(token, DraftTree()).logits.dense()[0]
            target.commit([0])
        assert torch.equal(tree_logits[row], alone), f"row {row}"


@pytest.mark.parametrize("kv_bf16", [False, True])
@pytest.mark.parametrize("mlp_rows", [256, 16])
def test_int8_prefill_is_the_prompt_decoded_token_by_token(monkeypatch, mlp_rows, kv_bf16):
    """With the kernel's prompt attention (head size 64), a prompt prefilled in one chunk
    leaves bitwise the cache and logits of the same prompt decoded one token at a time,
    its MLP in one pass or in slices of 16 rows, with fp32 or bf16 keys and values (not where
    the CPU multiplies bf16: a bf16 prompt then attends in bf16)."""
    from alignspec.targets.native import model as model_module

    monkeypatch.setattr(model_module, "MLP_ROWS", mlp_rows)
    model = make_tiny_llama(hidden_size=128, num_attention_heads=2, num_key_value_heads=1)
    target = NativeTarget.from_hf(model, quantize="int8", kv_bf16=kv_bf16)
    if not target.decoder.causal_kernel:
        pytest.skip("causal_attend needs alignspec's CPU kernel on AVX-512")
    if target.decoder.prompt_bf16:
        pytest.skip("a bf16 prompt attends in bf16 here")
    assert target.cache.keys.dtype == (torch.bfloat16 if kv_bf16 else torch.float32)
    prompt = [(7 * i + 3) % 96 for i in range(70)]
    whole = target.prefill(prompt).logits
    keys = target.cache.keys[:, :, : len(prompt)].clone()
    target.prefill(prompt[:1])
    for token in prompt[1:]:
        alone = target.verify(token, DraftTree()).logits.dense()[0]
        target.commit([0])
    assert torch.equal(target.cache.keys[:, :, : len(prompt)], keys)
    assert torch.equal(alone, whole)


def test_int8_keys_and_values_in_bf16_where_the_kernel_attends_and_close():
    """bf16 keys and values are the int8 model's by default wherever the kernel's AVX-512
    attention runs; the fp32 model never uses them. They move the prefill's logits less than
    the int8 rounding itself moves them from fp32's, and speculation over them stays
    token-identical to plain decoding over them."""
    model = make_tiny_llama(hidden_size=128, num_attention_heads=2, num_key_value_heads=1)
    auto = NativeTarget.from_hf(model, quantize="int8")
    if not auto.decoder.causal_kernel:
        pytest.skip("a bf16 cache needs alignspec's CPU kernel on AVX-512")
    assert auto.decoder.cache_dtype == torch.bfloat16
    assert NativeTarget.from_hf(model, kv_bf16=True).decoder.cache_dtype == torch.float32
    bf16 = NativeTarget.from_hf(model, quantize="int8", kv_bf16=True)
    exact = NativeTarget.from_hf(model, quantize="int8", kv_bf16=False)
    assert bf16.cache.keys.dtype == torch.bfloat16 and exact.cache.keys.dtype == torch.float32
    prompt = [(7 * i + 3) % 96 for i in range(70)]
    a, b = bf16.prefill(prompt).logits, exact.prefill(prompt).logits
    fp32 = NativeTarget.from_hf(model).prefill(prompt).logits
    assert not torch.equal(a, b)  # the bf16 path did run
    assert float((a - b).abs().max()) < float((b - fp32).abs().max())
    assert float((a - b).abs().mean()) < float((b - fp32).abs().mean())
    outs = {name: run(bf16, d, prompt + LOOKUP_PROMPT, 30) for name, d in drafters().items()}
    assert outs["pld"] == outs["ar"] and outs["pld-tree"] == outs["ar"]


class KernelCallsInPython:
    """What DecoderStack does, spelled out as one kernel call at a time from Python."""

    def __init__(self, decoder) -> None:
        self.d = decoder

    def forward(self, x, h, cos, sin, keys, values, start, mask, values_t, vt_done):
        d, s = self.d, self.d.spec
        k, rows = d.kernel, x.shape[0]
        for i, block in enumerate(d.blocks):
            qkv = block.qkv(h).view(rows, s.num_heads + 2 * s.num_kv_heads, s.head_dim)
            vt = values_t[i] if values_t is not None else None
            att = k.rope_attend(
                qkv, cos, sin, keys[i], values[i], start, s.num_heads, mask, d.scale, vt, vt_done
            )
            h = k.add_rms_norm_(x, block.o(att), block.mlp_norm, s.rms_eps)
            act = k.silu_mul(block.gate_up(h))
            after = d.blocks[i + 1].attn_norm if i + 1 < len(d.blocks) else d.final_norm
            h = k.add_rms_norm_(x, block.down(act), after, s.rms_eps)
        return h


def test_int8_layer_stack_is_the_kernel_calls_bitwise(tiny_model):
    """The kernel's DecoderStack (every layer in one call) gives the bits of the same kernel
    calls made layer by layer from Python: logits of a masked tree verify, the cache rows it
    wrote, and the next decode. Qwen2 has q/k/v biases, so the bias path runs too; norm weights
    are drawn at random so that a norm taken from the wrong layer shows."""
    model = copy.deepcopy(tiny_model)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.5 * torch.randn(param.shape, generator=gen))
    target = NativeTarget.from_hf(model, quantize="int8")
    if target.decoder.stack is None:
        pytest.skip("alignspec's CPU kernel is not built here")
    prompt = [(5 * i + 2) % 96 for i in range(40)]
    results = []
    for use in (target.decoder.stack, KernelCallsInPython(target.decoder)):
        target.decoder.stack = use
        target.prefill(prompt)
        logits = target.verify(7, TREE).logits.dense()
        target.commit([0, 4, 5])  # a later branch: the cache compacts
        keys = target.cache.keys[:, :, : target.cache.length].clone()
        results.append((logits, keys, target.verify(9, DraftTree()).logits.dense()))
    for got, want in zip(results[0], results[1], strict=True):
        assert torch.equal(got, want)


# ---------------------------------------------------------------------------- engine


def run(target, drafter: Drafter, prompt: list[int], max_new: int, eos=frozenset()) -> list[int]:
    engine = Engine(target, drafter, GreedyVerifier())
    out: list[int] = []
    stats = GenerationStats()
    for new in engine.generate(prompt, max_new_tokens=max_new, eos_ids=eos, stats=stats):
        out.extend(new)
    return out


LOOKUP_PROMPT = [1, 10, 11, 12, 13, 14, 10, 11, 12, 20, 21, 22, 10, 11]


def drafters() -> dict[str, Drafter]:
    return {
        "ar": NoDrafter(),
        "pld": PromptLookupDrafter(PromptLookupConfig(max_ngram=3, draft_len=6)),
        "pld-tree": PromptLookupDrafter(PromptLookupConfig(max_ngram=3, draft_len=6, tree=True)),
    }


def test_greedy_identical_between_backends(tiny_model):
    truth = run(HFTarget(tiny_model), NoDrafter(), LOOKUP_PROMPT, 30)
    for name, drafter in drafters().items():
        assert run(NativeTarget.from_hf(tiny_model), drafter, LOOKUP_PROMPT, 30) == truth, name


def test_int8_speculation_is_lossless_relative_to_int8_ar(tiny_llama):
    target = NativeTarget.from_hf(tiny_llama, quantize="int8")
    outs = {name: run(target, d, LOOKUP_PROMPT, 30) for name, d in drafters().items()}
    assert outs["pld"] == outs["ar"] and outs["pld-tree"] == outs["ar"]


# ---------------------------------------------------------------------------- real model

REAL_PROMPTS = [
    "Summarize: The Eiffel Tower, completed in 1889 for the World's Fair in Paris, was first "
    "criticised by artists and is now the most visited paid monument in the world.",
    "Rewrite this function with type hints: def add(a, b): return a + b",
    "List the planets of the solar system in order, then list them again in reverse order.",
]
REAL_NEW = 32


@pytest.fixture(scope="module")
def real_targets(real_llm):
    return HFTarget(real_llm.model), NativeTarget.from_hf(real_llm.model)


def first_divergence(a: list[int], b: list[int]) -> str:
    k = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"first divergence at token {k} of {len(a)}/{len(b)}"


@pytest.mark.real
def test_real_logits_match(real_llm, real_targets):
    hf, nat = real_targets
    ids = real_llm.encode(REAL_PROMPTS[0])
    a, b = nat.prefill(ids[:-1], topk=4), hf.prefill(ids[:-1], topk=4)
    assert max_diff(a.logits, b.logits) < ATOL
    assert torch.equal(a.topk_ids[:, 0], b.topk_ids[:, 0])
    tree = DraftTree.from_sequences([ids[5:12], [*ids[5:8], 17, 18], ids[20:24]], max_nodes=16)
    va, vb = nat.verify(ids[-1], tree), hf.verify(ids[-1], tree)
    assert max_diff(va.logits.dense(), vb.logits.dense()) < ATOL
    rows = tree.path_to(tree.num_rows - 1)  # the last branch: not a prefix of the rows
    nat.commit(rows)
    hf.commit(rows)
    na, nb = nat.verify(99, DraftTree.chain([100, 101])), hf.verify(99, DraftTree.chain([100, 101]))
    assert max_diff(na.logits.dense(), nb.logits.dense()) < ATOL


@pytest.mark.real
def test_real_greedy_identical_between_backends(real_llm, real_targets):
    hf, nat = real_targets
    for prompt in REAL_PROMPTS:
        ids = real_llm.encode(prompt)
        truth = run(hf, NoDrafter(), ids, REAL_NEW, real_llm.eos_ids)
        for name, drafter in drafters().items():
            got = run(nat, drafter, ids, REAL_NEW, real_llm.eos_ids)
            assert got == truth, f"{name}: {first_divergence(truth, got)}"


@pytest.mark.real
def test_real_int8_lossless_relative_to_its_own_ar(real_llm):
    target = NativeTarget.from_hf(real_llm.model, quantize="int8")
    for prompt in REAL_PROMPTS[:2]:
        ids = real_llm.encode(prompt)
        outs = {n: run(target, d, ids, REAL_NEW, real_llm.eos_ids) for n, d in drafters().items()}
        for name in ("pld", "pld-tree"):
            assert outs[name] == outs["ar"], f"{name}: {first_divergence(outs['ar'], outs[name])}"


def test_transposed_values_survive_growth_and_reset():
    """The AMX attention's transposed value blocks: allocated with the cache, the blocks
    already filled kept when the cache grows, none counted as filled after a reset."""
    cache = StaticKVCache(
        num_layers=2,
        num_kv_heads=3,
        head_dim=64,
        max_context=4096,
        dtype=torch.bfloat16,
        device=torch.device("cpu"),
        transposed_values=True,
    )
    assert cache.values_t is not None and cache.values_t.shape == (2, 3, 32, 64, 32)
    cache.values_t.normal_()
    cache.length, cache.vt_blocks = 300, 9
    kept = cache.values_t[:, :, :9].clone()
    cache.reserve(1500)
    assert cache.values_t.shape == (2, 3, 64, 64, 32)
    assert torch.equal(cache.values_t[:, :, :9], kept)
    cache.reset()
    assert cache.vt_blocks == 0
