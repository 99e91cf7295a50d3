"""alignspec's compiled int8 kernel: the exact product of per-row codes and int8 weights, bitwise
the same for a row alone and inside any batch, and the same bits as oneDNN's int8 GEMM.

The kernel is built once per machine (about a minute); these tests fail rather than skip
where a compiler and ninja are present, since that is where users get the kernel too."""

from __future__ import annotations

import itertools
import shutil

import pytest
import torch

from alignspec.targets.native import cpu_kernel
from alignspec.targets.native import linear as linear_module
from alignspec.targets.native.linear import make_linear
from alignspec.targets.native.quant import W8A8Linear, quantize_rows, w8a8_exact

pytestmark = pytest.mark.skipif(
    shutil.which("c++") is None or shutil.which("ninja") is None,
    reason="no C++ compiler or ninja to build the kernel",
)

#: SmolLM2-135M's fused qkv, o, gate_up, down and LM head slice, plus shapes with tails
#: (K not a multiple of 4, N not a multiple of 16 or 64)
SHAPES = [(576, 960), (576, 576), (576, 3072), (1536, 576), (576, 8192), (70, 37), (5, 200)]


@pytest.fixture(scope="module")
def kernel():
    built = cpu_kernel.load()
    assert built is not None, "the int8 CPU kernel did not build"
    return built


def exact_product(lin: W8A8Linear, x: torch.Tensor) -> torch.Tensor:
    """The W8A8 result with the integer sums in fp64, then the kernel's fp32 roundings."""
    q, row_scale = quantize_rows(x)
    sums = (q.double() @ lin.qweight.double().t()).float()
    out = sums * lin.scale * row_scale
    return out + lin.bias if lin.bias is not None else out


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("bias", [True, False])
def test_kernel_is_the_exact_rounded_product(kernel, shape, bias):
    k, n = shape
    gen = torch.Generator().manual_seed(k * n)
    w = torch.randn(n, k, generator=gen) * 0.05
    b = torch.randn(n, generator=gen) if bias else None
    lin = W8A8Linear(w, b, kernel=kernel)
    # 130, 300: quantised on two threads, in prompt_out's blocks of rows (from 128)
    for rows in (1, 3, 4, 5, 9, 12, 16, 33, 127, 130, 300):
        x = torch.randn(rows, k, generator=gen) * torch.logspace(-2, 2, rows)[:, None]
        got = lin(x)
        assert got.shape == (rows, n)
        assert torch.equal(got, exact_product(lin, x)), f"{rows} rows"


@pytest.mark.parametrize("shape", SHAPES[:4], ids=lambda s: f"{s[0]}x{s[1]}")
def test_amx_tiles_give_the_vnni_bits(kernel, shape):
    """Calls from a few rows up run on AMX tiles where the CPU has them; the sums are exact
    and the epilogue shared, so every row count must give the one-row path's bits."""
    if kernel.isa() != "amx-int8":
        pytest.skip("no AMX on this CPU")
    k, n = shape
    gen = torch.Generator().manual_seed(n)
    lin = W8A8Linear(torch.randn(n, k, generator=gen) * 0.05, torch.randn(n), kernel=kernel)
    old = kernel.amx_min_rows(0)
    try:
        for rows in (1, 2, 6, 15, 16, 17, 40, 300):  # 300: blocks of 128 rows (a prompt)
            x = torch.randn(rows, k, generator=gen) * torch.logspace(-2, 2, rows)[:, None]
            kernel.amx_min_rows(0)
            vnni = lin(x)
            kernel.amx_min_rows(1)
            assert torch.equal(lin(x), vnni), f"{rows} rows"
    finally:
        kernel.amx_min_rows(old)


@pytest.mark.parametrize("n", [3072, 80])  # 80: not whole pairs of gate blocks, two steps
@pytest.mark.parametrize("bias", [True, False])
def test_gate_up_silu_is_silu_mul_of_the_product(kernel, n, bias):
    """The fused gate/up projection with its SwiGLU (a prompt slice's, one pass on AMX) gives
    silu_mul over linear()'s output bit for bit, at any row count, on 1 and 2 threads."""
    k = 576
    gen = torch.Generator().manual_seed(n)
    b = torch.randn(n, generator=gen) if bias else None
    lin = W8A8Linear(torch.randn(n, k, generator=gen) * 0.05, b, kernel=kernel)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for rows in (1, 7, 255, 256, 300, 513):
                x = torch.randn(rows, k, generator=gen) * torch.logspace(-2, 2, rows)[:, None]
                want = kernel.silu_mul(lin(x))
                got = kernel.gate_up_silu(x, lin.packed, lin.colsum, lin.scale, lin.bias, n)
                assert torch.equal(got, want), f"{rows} rows, {threads} threads"
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_row_is_the_same_alone_and_in_any_batch(kernel, threads):
    k, n = 576, 3072
    gen = torch.Generator().manual_seed(0)
    lin = W8A8Linear(torch.randn(n, k, generator=gen) * 0.05, torch.randn(n), kernel=kernel)
    row = torch.randn(1, k, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        alone = lin(row)[0]
        for rows in (2, 7, 16, 64, 300):
            for place in (0, rows // 2, rows - 1):
                x = torch.randn(rows, k, generator=gen)
                x[(place + 1) % rows] *= 10.0  # a much larger neighbour
                x[place] = row[0]
                assert torch.equal(lin(x)[place], alone), f"{rows} rows, row {place}"
    finally:
        torch.set_num_threads(before)


def test_codes_next_to_half_integers_round_as_the_quotient(kernel):
    """The kernel forms x / s as x * (1 / s) and divides only where that lands near a
    half-integer; values at and one float either side of (c + 1/2) * s must still get the
    codes of torch's division, rounded half to even. An identity weight makes each output
    its row's code times the scales, so one code off shows."""
    k = 96
    lin = W8A8Linear(torch.eye(k), kernel=kernel)
    gen = torch.Generator().manual_seed(5)
    rows = []
    for _ in range(40):
        amax = float(torch.empty(1).uniform_(0.3, 7.0, generator=gen))
        scale = torch.tensor(amax, dtype=torch.float32) / 127.0
        codes = torch.randint(-127, 127, (k - 1,), generator=gen).float() + 0.5
        mid = (codes * scale).float()
        side = torch.randint(-1, 2, (k - 1,), generator=gen)
        x = torch.where(side < 0, torch.nextafter(mid, mid - 1), mid)
        x = torch.where(side > 0, torch.nextafter(mid, mid + 1), x)
        rows.append(torch.cat([torch.tensor([amax]), x]))
    x = torch.stack(rows)
    assert torch.equal(lin(x), exact_product(lin, x))


def test_sums_at_the_int8_extremes_are_exact(kernel):
    """Every product 127 * 127 (or -127 * 127): the largest sums a row can have."""
    k = 1536
    w = torch.full((32, k), 1.0)
    w[1::2] = -1.0
    lin = W8A8Linear(w, kernel=kernel)
    x = torch.ones(3, k)
    x[1] = -1.0
    expected = exact_product(lin, x)
    assert torch.equal(lin(x), expected)
    assert float(expected[0, 0]) == pytest.approx(k, rel=1e-6)


def test_kernel_matches_onednn_bit_for_bit(kernel):
    if not w8a8_exact():
        pytest.skip("no exact oneDNN int8 GEMM on this CPU")
    gen = torch.Generator().manual_seed(3)
    w, b = torch.randn(960, 576, generator=gen) * 0.05, torch.randn(960, generator=gen)
    ours, onednn = W8A8Linear(w, b, kernel=kernel), W8A8Linear(w, b)
    for rows in (1, 6, 16):
        x = torch.randn(rows, 576, generator=gen) * 3
        assert torch.equal(ours(x), onednn(x))


def test_int8_linears_use_the_kernel_unless_disabled(kernel, monkeypatch):
    w = torch.randn(64, 32)
    assert make_linear(w, quantize="int8").kernel is kernel
    monkeypatch.setattr(linear_module.cpu_kernel, "load", lambda: None)
    lin = make_linear(w, quantize="int8")
    assert getattr(lin, "kernel", None) is None


def test_the_environment_switch_turns_the_kernel_off(monkeypatch):
    monkeypatch.setenv(cpu_kernel.ENV, "0")
    cpu_kernel.load.cache_clear()
    try:
        assert cpu_kernel.load() is None
    finally:
        monkeypatch.delenv(cpu_kernel.ENV)
        cpu_kernel.load.cache_clear()


def binary_tree_ancestors(rows: int) -> torch.Tensor:
    """[rows, rows] ancestor-or-self of a tree where node i's parent is (i - 1) // 2, so
    siblings sit between a row's ancestors."""
    parents = [-1] + [(i - 1) // 2 for i in range(1, rows)]
    anc = torch.zeros(rows, rows, dtype=torch.bool)
    for i in range(rows):
        j = i
        while j >= 0:
            anc[i, j] = True
            j = parents[j]
    return anc


def bf16_cache_ok(kernel, dtype: torch.dtype) -> None:
    if dtype == torch.bfloat16 and not kernel.causal_attend_ok(64):
        pytest.skip("a bf16 cache needs the AVX-512 kernel")


def scored_queries(kernel, q: torch.Tensor, dtype: torch.dtype, scale: float) -> torch.Tensor:
    """The queries a cache of ``dtype`` scores with, unscaled: rounded to bf16 after scaling
    where the kernel scores a bf16 cache in bf16 (AMX tiles, or AVX512-BF16 dot products)."""
    if dtype == torch.bfloat16 and kernel.attend_bf16_queries():
        return (q * scale).bfloat16().float() / scale
    return q


def attention_tolerance(kernel, dtype: torch.dtype) -> float:
    """How far attend_rows may land from fp32 attention on the queries it scores with: where a
    bf16 cache sums the values of slots from 64 positions back with bf16 probabilities (AMX
    tiles, or AVX512-BF16 pair products: attend_tree_depth() > 0), the rounding is relative up
    to 2^-9, as torch's bf16 SDPA's; elsewhere every sum is fp32."""
    return 2e-3 if dtype == torch.bfloat16 and kernel.attend_tree_depth() else 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_of_a_tree_row_equals_the_token_decoded_alone(kernel, dtype):
    """Ancestors at scattered slots with hidden siblings between them, in batches of 1-24
    rows: each row's output is bitwise what it is with those ancestors committed in order.
    (On AVX-512 a call of 5+ rows puts 16 head-rows in a vector and the rest, like a row
    decoded alone, 16 keys in a vector: both must give the same bits. A bf16 cache on AMX
    scores 16 keys for 16 head-rows per tile product, whatever the row count, and sums the
    values of whole 32-slot blocks from 64 positions back on tiles, with AVX512-BF16 as bf16
    pair products: after 350 the rows at depth 2 and deeper sum one block more that way than
    the first two. From 512 slots a few rows split across the threads.)"""
    from alignspec.targets.native.attention import attend, tree_mask

    bf16_cache_ok(kernel, dtype)
    gen = torch.Generator().manual_seed(5)
    heads, kv, dim = 9, 3, 64
    for prefix, rows in itertools.product((300, 350, 700), (1, 3, 5, 6, 20, 24)):
        keys = torch.randn(kv, prefix + 32, dim, generator=gen).to(dtype)
        values = torch.randn(kv, prefix + 32, dim, generator=gen).to(dtype)
        anc = binary_tree_ancestors(rows)
        mask = tree_mask(prefix, anc, torch.float32, torch.device("cpu"))
        q = torch.randn(rows, heads, dim, generator=gen)
        end = prefix + rows
        out = kernel.attend_rows(q, keys[:, :end], values[:, :end], mask, 0.125)
        wide = keys[:, :end].float(), values[:, :end].float()
        ref = attend(scored_queries(kernel, q, dtype, 0.125), *wide, mask, 0.125)
        assert float((out - ref).abs().max()) < attention_tolerance(kernel, dtype)
        for row in range(rows):
            path = [j for j in range(rows) if anc[row, j]]
            k2, v2 = keys.clone(), values.clone()
            for dst, src in enumerate(path):
                k2[:, prefix + dst] = keys[:, prefix + src]
                v2[:, prefix + dst] = values[:, prefix + src]
            end1 = prefix + len(path)
            alone = kernel.attend_rows(q[row : row + 1], k2[:, :end1], v2[:, :end1], None, 0.125)
            assert torch.equal(out[row], alone[0]), f"row {row} of {rows}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv", [(9, 3), (4, 2), (7, 1)])
def test_attention_split_across_threads_keeps_every_bit(kernel, heads, kv, dtype):
    """From 512 slots, a call whose KV heads do not share out evenly over the threads splits
    each KV head's work by slots and by value dimensions: the bits must stay those of whole
    KV heads per thread (one thread), for tree rows of every layout, before, at and after a
    tile's end."""
    from alignspec.targets.native.attention import tree_mask

    bf16_cache_ok(kernel, dtype)
    gen = torch.Generator().manual_seed(21)
    before = torch.get_num_threads()
    try:
        for prefix in (511, 700, 1061):
            keys = torch.randn(kv, prefix + 24, 64, generator=gen).to(dtype)
            values = torch.randn(kv, prefix + 24, 64, generator=gen).to(dtype)
            for rows in (1, 2, 5, 6, 11, 24):
                anc = binary_tree_ancestors(rows)
                mask = tree_mask(prefix, anc, torch.float32, torch.device("cpu"))
                q = torch.randn(rows, heads, 64, generator=gen)
                end = prefix + rows
                outs = []
                for threads in (1, 2, 3):
                    torch.set_num_threads(threads)
                    outs.append(kernel.attend_rows(q, keys[:, :end], values[:, :end], mask, 0.125))
                for out in outs[1:]:
                    assert torch.equal(out, outs[0]), f"{rows} rows after {prefix}"
    finally:
        torch.set_num_threads(before)


def test_rope_attend_refuses_tree_rows_deeper_than_its_value_lag(kernel):
    """Where a bf16 cache sums older values in bf16 (AMX tiles, AVX512-BF16 pairs), a row's
    bf16-summed slots must lie among the committed ones: a chain one block deeper than
    attend_tree_depth() is refused with the limit named; at the limit it runs."""
    from alignspec.targets.native.attention import tree_mask

    if not kernel.attend_tree_depth():
        pytest.skip("a bf16 cache sums its values in fp32 on this CPU (no AMX, no AVX512-BF16)")
    lag, start = kernel.attend_tree_depth(), 256
    rows = lag + 40
    gen = torch.Generator().manual_seed(8)
    qkv = torch.randn(rows, 15, 64, generator=gen)
    cos, sin = torch.ones(rows, 64), torch.zeros(rows, 64)
    keys = torch.randn(3, start + rows, 64, generator=gen).bfloat16()
    values = torch.randn(3, start + rows, 64, generator=gen).bfloat16()
    vt = torch.zeros(3, (start + rows) // 32, 64, 32, dtype=torch.bfloat16)
    chain = torch.tril(torch.ones(rows, rows, dtype=torch.bool))
    mask = tree_mask(start, chain, torch.float32, torch.device("cpu"))
    with pytest.raises(RuntimeError, match=f"more than {lag} tokens below the committed"):
        kernel.rope_attend(qkv, cos, sin, keys, values, start, 9, mask, 0.125, vt, 0)
    ok = lag + 1
    m = mask[:ok, : start + ok].contiguous()
    out = kernel.rope_attend(qkv[:ok], cos[:ok], sin[:ok], keys, values, start, 9, m, 0.125, vt, 0)
    assert torch.isfinite(out).all()


def test_a_bf16_cache_attends_as_its_values_widened_to_fp32(kernel):
    """Keys and values kept in bf16 widen to fp32 exactly, so attending from them must give
    the bits of attending from their fp32 copies: every layout (1-24 rows), whole and split
    across threads, and rope_attend's cache write rounds as torch rounds. Where the bf16 cache
    is scored in bf16 (AMX tiles, or AVX512-BF16 pair products), its queries are rounded to
    bf16 and its scores are not the FMA chains (on AMX most probabilities are rounded too):
    there it must match the fp32 copies attended by those queries, to those roundings."""
    from alignspec.targets.native.attention import tree_mask

    bf16_cache_ok(kernel, torch.bfloat16)
    gen = torch.Generator().manual_seed(31)
    before = torch.get_num_threads()
    try:
        for prefix in (300, 700):
            keys = torch.randn(3, prefix + 24, 64, generator=gen).bfloat16()
            values = torch.randn(3, prefix + 24, 64, generator=gen).bfloat16()
            for rows in (1, 2, 5, 6, 11, 24):
                anc = binary_tree_ancestors(rows)
                mask = tree_mask(prefix, anc, torch.float32, torch.device("cpu"))
                q = torch.randn(rows, 9, 64, generator=gen)
                end = prefix + rows
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    got = kernel.attend_rows(q, keys[:, :end], values[:, :end], mask, 0.125)
                    wide = (keys[:, :end].float(), values[:, :end].float())
                    qs = scored_queries(kernel, q, torch.bfloat16, 0.125)
                    want = kernel.attend_rows(qs, *wide, mask, 0.125)
                    if kernel.attend_bf16_queries():
                        tol = attention_tolerance(kernel, torch.bfloat16)
                        assert float((got - want).abs().max()) < tol
                        assert not torch.equal(got, kernel.attend_rows(q, *wide, mask, 0.125))
                    else:
                        assert torch.equal(got, want), f"{rows} rows after {prefix}, {threads}"
    finally:
        torch.set_num_threads(before)
    rows, cap, start = 3, 40, 17
    qkv = torch.randn(rows, 9 + 6, 64, generator=gen)
    angle = torch.rand(rows, 32, generator=gen) * 6
    cos, sin = torch.cos(angle).repeat(1, 2), torch.sin(angle).repeat(1, 2)
    narrow = [torch.randn(3, cap, 64, generator=gen).bfloat16() for _ in range(2)]
    wide = [t.float() for t in narrow]
    kernel.rope_attend(qkv, cos, sin, *narrow, start, 9, None, 0.125)
    kernel.rope_attend(qkv, cos, sin, *wide, start, 9, None, 0.125)
    for w, n in zip(wide, narrow, strict=True):
        assert not torch.equal(w, n.float())  # the fp32 cache kept what bf16 rounds off
        assert torch.equal(w.bfloat16(), n)  # the new rows rounded as torch rounds


@pytest.mark.parametrize("heads,kv", [(9, 3), (4, 2), (7, 1)])
def test_bf16_prompt_attention_is_sdpa_on_bf16_inputs(kernel, heads, kv):
    """The int8 model's prompt attention in bf16 (AMX tiles or AVX512-BF16): fp32 attention
    over its bf16 query, keys and values up to the rounding of the probabilities to bf16, for
    chunks from slot 0 and after a cached prefix, rows not a multiple of the 16-row task, keys
    not of the 32-key step; the cache past the chunk holds NaN, which must never be read; 1
    and 2 threads give the same bits. A row seeing one key more or less is off by far more
    than the tolerance."""
    from alignspec.targets.native.attention import attend_causal

    if not kernel.causal_attend_bf16_ok(64):
        pytest.skip("needs AMX-BF16 or AVX512-BF16")
    gen = torch.Generator().manual_seed(14)
    before = torch.get_num_threads()
    try:
        for start, rows in ((0, 1), (0, 5), (0, 67), (45, 20), (32, 32), (0, 300), (7, 130)):
            end = start + rows
            keys = torch.randn(kv, end + 40, 64, generator=gen).bfloat16()
            values = torch.randn(kv, end + 40, 64, generator=gen).bfloat16()
            keys[:, end:], values[:, end:] = float("nan"), float("nan")
            q = torch.randn(rows, heads, 64, generator=gen)
            runs = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                runs.append(kernel.causal_attend_bf16(q, keys, values, start, 0.125))
            assert torch.equal(runs[0], runs[1]), f"{rows} rows after {start}"
            mask = torch.full((rows, end), float("-inf"))
            for r in range(rows):
                mask[r, : start + r + 1] = 0.0
            wide = q.bfloat16().float(), keys[:, :end].float(), values[:, :end].float()
            want = attend_causal(*wide, mask, 0.125, start)
            err = (runs[0] - want).abs()
            assert float(err.max()) < 2e-2 and float(err.mean()) < 1e-3, f"{rows} after {start}"
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv", [(9, 3), (4, 2), (7, 1), (14, 2)])
def test_causal_attend_rows_are_the_rows_attended_alone(kernel, heads, kv, dtype):
    """A prompt chunk's attention (prefill): each row bitwise what attend_rows gives it alone
    over the slots it sees, and close to torch's SDPA over the same keys and values; chunks
    from slot 0 and after a cached prefix, lengths with and without a tail past a 32-key
    tile, 1-6 head-rows per block; an fp32 or a bf16 cache (widened on load, so the same
    arithmetic, but for a bf16 cache's scores with AVX512-BF16, bf16 pairs here as in
    attend_rows), except that on AMX attend_rows scores a bf16 cache on tiles."""
    from alignspec.targets.native.attention import attend_causal

    if not kernel.causal_attend_ok(64):
        pytest.skip("causal_attend needs AVX-512")
    bf16_tiles = dtype == torch.bfloat16 and kernel.attend_bf16_amx()
    gen = torch.Generator().manual_seed(12)
    for start, rows in ((0, 1), (0, 5), (0, 67), (45, 20), (32, 32)):
        end = start + rows
        keys = torch.randn(kv, end + 3, 64, generator=gen).to(dtype)
        values = torch.randn(kv, end + 3, 64, generator=gen).to(dtype)
        q = torch.randn(rows, heads, 64, generator=gen)
        got = kernel.causal_attend(q, keys, values, start, 0.125)
        mask = torch.full((rows, end), float("-inf"))
        for r in range(rows):
            mask[r, : start + r + 1] = 0.0
        wide = keys[:, :end].float(), values[:, :end].float()
        ref = attend_causal(scored_queries(kernel, q, dtype, 0.125), *wide, mask, 0.125, start)
        assert float((got - ref).abs().max()) < 1e-5
        if bf16_tiles:
            continue
        for r in range(rows):
            seen = start + r + 1
            alone = kernel.attend_rows(q[r : r + 1], keys[:, :seen], values[:, :seen], None, 0.125)
            assert torch.equal(got[r], alone[0]), f"row {r} of {rows} after {start}"


def test_int8_decoder_attends_through_the_kernel_on_bf16_keys_and_values(kernel, tiny_llama):
    from alignspec.targets.native.model import Decoder
    from alignspec.targets.native.spec import inspect_model

    model = tiny_llama
    spec = inspect_model(model)
    int8 = Decoder.from_hf(model, spec, quantize="int8")
    assert int8.kernel is kernel
    want = torch.bfloat16 if int8.causal_kernel else torch.float32
    assert int8.new_cache().value_dtype == want
    assert Decoder.from_hf(model, spec).kernel is None  # fp32 keeps torch's attention


@pytest.mark.parametrize("width", [576, 100])  # 100: a tail past the last 16-value step
def test_rms_norm_matches_torch_and_keeps_rows_apart(kernel, width):
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(9, width, generator=gen) * 3
    w = torch.randn(width, generator=gen)
    got = kernel.rms_norm(x, w, 1e-5)
    torch.testing.assert_close(got, F.rms_norm(x, (width,), w, 1e-5), rtol=1e-5, atol=1e-6)
    assert torch.equal(kernel.rms_norm(x[4:5], w, 1e-5)[0], got[4])
    delta = torch.randn(9, width, generator=gen)
    residual = x.clone()
    fused = kernel.add_rms_norm_(residual, delta, w, 1e-5)
    assert torch.equal(residual, x + delta)  # the residual is updated in place
    assert torch.equal(fused, kernel.rms_norm(x + delta, w, 1e-5))
    # a prompt chunk's rows are split across threads: each row is still its own
    big = torch.randn(300, width, generator=gen)
    big_delta = torch.randn(300, width, generator=gen)
    many = kernel.rms_norm(big, w, 1e-5)
    many_fused = kernel.add_rms_norm_(big.clone(), big_delta, w, 1e-5)
    for r in (0, 131, 299):
        assert torch.equal(kernel.rms_norm(big[r : r + 1], w, 1e-5)[0], many[r])
        one = kernel.add_rms_norm_(big[r : r + 1].clone(), big_delta[r : r + 1], w, 1e-5)
        assert torch.equal(one[0], many_fused[r])
    # into a slice of another tensor (a prompt's MLP slice writing over its own input rows)
    residual, out = big.clone(), torch.full((300, width), float("nan"))
    kernel.add_rms_norm_into(residual[100:300], big_delta[100:300], w, 1e-5, out[100:300])
    assert torch.equal(out[100:300], many_fused[100:300]) and out[:100].isnan().all()
    assert torch.equal(residual[100:300], big[100:300] + big_delta[100:300])


def rope_tables(dim: int, cap: int):
    """RopeTables of a model with head size ``dim`` and RoPE base 10,000, ``cap`` positions."""
    from alignspec.targets.native.rope import RopeTables

    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    return RopeTables(inv_freq, cap, scaling=1.0, dtype=torch.float32, device=torch.device("cpu"))


def test_rope_attend_matches_rotary_cache_write_and_attend_rows(kernel):
    """The fused layer call writes the keys and values rope.py and the cache would, attends
    like attend_rows, and a chain of rows verified at once equals the rows decoded one by one
    bit for bit (the lossless property)."""
    gen = torch.Generator().manual_seed(11)
    heads, kv, dim, start, rows, cap = 9, 3, 64, 40, 6, 64
    tables = rope_tables(dim, cap)
    qkv = torch.randn(rows, heads + 2 * kv, dim, generator=gen)
    cos, sin = tables.gather(torch.arange(start, start + rows))
    keys = torch.randn(kv, cap, dim, generator=gen)
    values = torch.randn(kv, cap, dim, generator=gen)
    alone_k, alone_v = keys.clone(), values.clone()
    causal = torch.zeros(rows, start + rows)
    causal[:, start:] = torch.full((rows, rows), float("-inf")).triu(1)
    ref_k, ref_v = keys.clone(), values.clone()
    qk = tables.apply(qkv[:, : heads + kv], cos, sin)
    ref_k[:, start : start + rows] = qk[:, heads:].transpose(0, 1)
    ref_v[:, start : start + rows] = qkv[:, heads + kv :].transpose(0, 1)
    end = start + rows
    ref = kernel.attend_rows(qk[:, :heads], ref_k[:, :end], ref_v[:, :end], causal, 0.125)
    got = kernel.rope_attend(
        qkv, cos.squeeze(1), sin.squeeze(1), keys, values, start, heads, causal, 0.125
    )
    assert torch.equal(values, ref_v)
    torch.testing.assert_close(keys, ref_k, rtol=0, atol=1e-6)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    for i in range(rows):
        one = kernel.rope_attend(
            qkv[i : i + 1], cos[i], sin[i], alone_k, alone_v, start + i, heads, None, 0.125
        )
        assert torch.equal(one[0], got[i]), f"row {i}"
    assert torch.equal(alone_k, keys)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("threads", [1, 2])
def test_rope_write_writes_the_keys_decoding_writes(kernel, dtype, threads):
    """A prompt chunk's rotary + cache write (rope_write, rows split across threads) puts
    into the cache the bits that rope_attend writes when the same rows are decoded one at a
    time, and returns rope.py's rotated queries."""
    bf16_cache_ok(kernel, dtype)
    gen = torch.Generator().manual_seed(12)
    heads, kv, dim, start, rows, cap = 9, 3, 64, 5, 300, 320
    tables = rope_tables(dim, cap)
    qkv = torch.randn(rows, heads + 2 * kv, dim, generator=gen) * 3
    cos, sin = tables.gather(torch.arange(start, start + rows))
    keys = torch.randn(kv, cap, dim, generator=gen).to(dtype)
    values = torch.randn(kv, cap, dim, generator=gen).to(dtype)
    one_k, one_v = keys.clone(), values.clone()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        q = kernel.rope_write(qkv, cos[:, 0], sin[:, 0], keys, values, start, heads)
    finally:
        torch.set_num_threads(before)
    for i in range(rows):
        kernel.rope_attend(
            qkv[i : i + 1], cos[i], sin[i], one_k, one_v, start + i, heads, None, 0.125
        )
    assert torch.equal(keys, one_k) and torch.equal(values, one_v)
    qk = tables.apply(qkv[:, : heads + kv], cos, sin)
    torch.testing.assert_close(q, qk[:, :heads], rtol=0, atol=1e-6)
    written = keys[:, start : start + rows].transpose(0, 1).float()
    torch.testing.assert_close(written, qk[:, heads:].to(dtype).float(), rtol=0, atol=1e-6)


def test_rope_attend_makes_the_transposed_value_blocks_it_is_not_given(kernel):
    """On AMX the decode rows sum their older value blocks on tiles from the cache's
    transposed copy; a call without that copy makes it itself (it read a null pointer once):
    the same bits as a call with it, at lengths before and after the first whole block."""
    if not kernel.attend_bf16_amx():
        pytest.skip("the transposed value blocks are read on AMX tiles only")
    gen = torch.Generator().manual_seed(21)
    heads, kv, dim, cap = 9, 3, 64, 320
    tables = rope_tables(dim, cap)
    for start, rows in ((10, 1), (100, 1), (200, 3), (257, 5)):
        qkv = torch.randn(rows, heads + 2 * kv, dim, generator=gen)
        cos, sin = tables.gather(torch.arange(start, start + rows))
        keys = torch.randn(kv, cap, dim, generator=gen).bfloat16()
        values = torch.randn(kv, cap, dim, generator=gen).bfloat16()
        blocks = torch.zeros(kv, cap // 32, dim, 32, dtype=torch.bfloat16)
        args = (cos[:, 0].contiguous(), sin[:, 0].contiguous())
        mask = None
        if rows > 1:  # a chain: each row sees the committed slots and the rows before it
            mask = torch.zeros(rows, start + rows)
            for r in range(rows):
                mask[r, start + r + 1 :] = float("-inf")
        given = kernel.rope_attend(
            qkv, *args, keys.clone(), values.clone(), start, heads, mask, 0.125, blocks, 0
        )
        made = kernel.rope_attend(
            qkv, *args, keys.clone(), values.clone(), start, heads, mask, 0.125, None, 0
        )
        assert torch.equal(given, made), f"{rows} rows after {start}"


def test_silu_mul_matches_torch_and_keeps_rows_apart(kernel):
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(4)
    inter = 1539  # not a multiple of the vector width: the scalar tail runs too
    gu = torch.randn(7, 2 * inter, generator=gen) * 6
    gu[0, :3] = torch.tensor([0.0, -100.0, 100.0])
    got = kernel.silu_mul(gu)
    ref = F.silu(gu[:, :inter]) * gu[:, inter:]
    torch.testing.assert_close(got, ref, rtol=2e-6, atol=1e-6)
    assert torch.equal(kernel.silu_mul(gu[3:4].contiguous())[0], got[3])
    big = torch.randn(150, 2 * inter, generator=gen) * 6  # split across threads
    many = kernel.silu_mul(big)
    for r in (0, 77, 149):
        assert torch.equal(kernel.silu_mul(big[r : r + 1].contiguous())[0], many[r])


def test_top_probs_kernel_matches_softmax_topk(kernel):
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(5, 49152, generator=gen) * 4
    logits[2, 7] = logits[2, 9] = 30.0  # a tie: the lower id first
    ids, probs = kernel.top_probs(logits, 6)
    ref = torch.softmax(logits.double(), dim=-1).topk(6)
    assert torch.equal(ids[[0, 1, 3, 4]], ref.indices[[0, 1, 3, 4]])
    assert ids[2, :2].tolist() == [7, 9]
    torch.testing.assert_close(probs.double(), ref.values, rtol=1e-5, atol=1e-7)
    alone_ids, alone_probs = kernel.top_probs(logits[3:4], 6)
    assert torch.equal(alone_ids[0], ids[3]) and torch.equal(alone_probs[0], probs[3])
    odd_ids, _ = kernel.top_probs(logits[:, :1003], 3)  # a tail past the vector width
    assert torch.equal(odd_ids, logits[:, :1003].topk(3).indices)


def test_top_probs_uses_the_kernel_only_once_it_is_loaded(kernel, monkeypatch):
    from alignspec.targets import base

    calls: list[int] = []
    monkeypatch.setattr(cpu_kernel, "loaded", lambda: None)
    base.top_probs(torch.randn(2, 300), 3)

    class Spy:
        def top_probs(self, logits, k):
            calls.append(k)
            return kernel.top_probs(logits, k)

    monkeypatch.setattr(cpu_kernel, "loaded", lambda: Spy())
    ids, probs = base.top_probs(torch.randn(2, 300), 3)
    assert calls == [3] and ids.shape == (2, 3) and probs.shape == (2, 3)
