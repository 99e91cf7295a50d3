"""The native backend's quantised linears: a row's output is bitwise the same alone and inside
batches of other rows (of 10x the magnitude: the trap that per-call activation scales fall
into), and each kernel computes the product it claims."""

from __future__ import annotations

import pytest
import torch

from alignspec.targets.native import linear as linear_module
from alignspec.targets.native.linear import make_linear
from alignspec.targets.native.quant import (
    Int8Linear,
    W8A8Linear,
    quantize_per_channel,
    quantize_rows,
    w8a8_exact,
)

#: (in, out) of SmolLM2-135M's fused qkv, gate_up, down and a slice of its LM head
SHAPES = [(576, 960), (576, 3072), (1536, 576), (576, 8192)]
BATCHES = (2, 16, 64)


def kernels() -> dict[str, type]:
    found: dict[str, type] = {"int8-fp32-emulated": Int8Linear}
    if w8a8_exact():
        found["w8a8"] = W8A8Linear
    return found


def assert_row_independent(lin, k: int, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    row = torch.randn(1, k, generator=gen)
    alone = lin(row)[0]
    for rows in BATCHES:
        for place in (0, rows // 2, rows - 1):
            x = torch.randn(rows, k, generator=gen) * torch.logspace(-1, 1, rows)[:, None]
            x[(place + 1) % rows] *= 10.0  # a much larger neighbour
            x[place] = row[0]
            got = lin(x)[place]
            assert torch.equal(got, alone), f"{rows} rows, row {place}: {(got - alone).abs().max()}"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", ["int8-fp32-emulated", "w8a8"])
@pytest.mark.parametrize("threads", [1, 2])
def test_rows_are_independent(name, shape, threads):
    if name not in kernels():
        pytest.skip("kernel unavailable on this CPU")
    k, n = shape
    torch.manual_seed(1)
    w, b = torch.randn(n, k) * 0.05, torch.randn(n)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert_row_independent(kernels()[name](w, b), k)
    finally:
        torch.set_num_threads(before)


def test_quantize_rows_is_per_row():
    x = torch.randn(5, 64)
    q, s = quantize_rows(x)
    assert q.dtype == torch.int8 and s.shape == (5, 1)
    assert int(q.abs().amax()) == 127
    assert float((q.float() * s - x).abs().max()) <= float(s.max()) / 2 + 1e-6
    q2, _ = quantize_rows(torch.cat([x[:2], x[2:] * 50]))
    assert torch.equal(q2[:2], q[:2])


@pytest.mark.parametrize("kernel", [Int8Linear, W8A8Linear], ids=["fp32-emulated", "onednn"])
def test_int8_kernels_are_the_product_of_rounded_rows_and_weights(kernel):
    if kernel is W8A8Linear and not w8a8_exact():
        pytest.skip("no exact oneDNN int8 GEMM here")
    torch.manual_seed(0)
    w, b, x = torch.randn(1100, 2100), torch.randn(1100), torch.randn(7, 2100) * 3
    lin = kernel(w, b, block=256) if kernel is Int8Linear else kernel(w, b)
    qw, sw = quantize_per_channel(w)
    qx, sx = quantize_rows(x)
    ref = (qx.double() @ qw.double().t()) * sx.double() * sw.double() + b.double()
    assert float((lin(x).double() - ref).abs().max()) < 1e-4 * float(ref.abs().max())
    assert lin(x[None]).shape == (1, 7, 1100)  # leading dims are kept
    assert torch.equal(lin.dequantized(), qw.float() * sw[:, None])
    assert float((lin.dequantized() - w).abs().max()) <= float(w.abs().amax(1).max()) / 254 + 1e-6


def test_fp32_emulation_sums_exactly_at_the_extremes():
    w = torch.full((4, 2100), 0.5)
    w[1] = -0.5
    lin = Int8Linear(w)
    x = torch.ones(3, 2100)  # every product 127 * 127, sums 2100 * 16129 > 2^24
    pieces = [(1024 * 16129.0), (1024 * 16129.0), (52 * 16129.0)]
    exact = torch.tensor(pieces).sum() * (0.5 / 127) * (1 / 127)
    assert torch.equal(lin(x)[:, 0], exact.expand(3))


def test_int8_choice_follows_the_exactness_probe(monkeypatch):
    """Without the compiled kernel (tests/targets/test_cpu_kernel.py), oneDNN where exact."""
    monkeypatch.setattr(linear_module.cpu_kernel, "load", lambda: None)
    w = torch.randn(32, 16)
    expected = W8A8Linear if w8a8_exact() else Int8Linear
    assert isinstance(make_linear(w, quantize="int8"), expected)
    monkeypatch.setattr(linear_module, "w8a8_exact", lambda: False)
    assert isinstance(make_linear(w, quantize="int8"), Int8Linear)
