"""Weights copied into huge pages keep their values, and the kernel's linear reads them alike."""

from __future__ import annotations

import itertools

import pytest
import torch

from alignspec.targets.native import cpu_kernel
from alignspec.targets.native.hugepages import HUGE_PAGE, huge_pages_available, in_huge_pages
from alignspec.targets.native.quant import W8A8Linear, place_in_huge_pages


def test_copies_keep_values_shapes_and_dtypes() -> None:
    g = torch.Generator().manual_seed(0)
    tensors = [
        torch.randint(-127, 128, (1536, 1024), dtype=torch.int8, generator=g),
        torch.randn(3, 5, generator=g),
        torch.randint(0, 255, (700, 900), dtype=torch.uint8, generator=g),
    ]
    copies = in_huge_pages(tensors)
    for t, c in zip(tensors, copies, strict=True):
        assert c.dtype == t.dtype and c.shape == t.shape and torch.equal(c, t)
    if huge_pages_available():
        assert copies[0].data_ptr() % HUGE_PAGE == 0
        assert all(c.data_ptr() != t.data_ptr() for t, c in zip(tensors, copies, strict=True))
        # the copies do not overlap
        spans = sorted((c.data_ptr(), c.data_ptr() + c.numel() * c.element_size()) for c in copies)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))


def test_small_sets_stay_where_they_are() -> None:
    tensors = [torch.zeros(10), torch.ones(4, 4)]
    assert all(c is t for t, c in zip(tensors, in_huge_pages(tensors), strict=True))


def test_moved_linear_gives_the_same_bits() -> None:
    kernel = cpu_kernel.load()
    if kernel is None:
        pytest.skip("alignspec's CPU kernel does not build here")
    g = torch.Generator().manual_seed(1)
    lin = W8A8Linear(torch.randn(4096, 576, generator=g), kernel=kernel)
    x = torch.randn(5, 576, generator=g)
    before = lin(x)
    packed = lin.packed
    place_in_huge_pages([lin, object()])
    if huge_pages_available():
        assert lin.packed.data_ptr() != packed.data_ptr()
    assert torch.equal(lin(x), before)
