"""The measured verify-cost curve: monotone, interpolated, cached per machine and model."""

from __future__ import annotations

import json

from alignspec.cost import CostModel, cache_path, load_or_measure, measure
from alignspec.targets.native.target import NativeTarget


def test_interpolation_and_extrapolation() -> None:
    cost = CostModel(rows=[1, 4, 8], seconds=[1.0, 1.3, 2.1], key={})
    assert cost.verify(1) == 1.0 and cost.verify(4) == 1.3
    assert cost.verify(2) == 1.1
    assert abs(cost.verify(10) - 2.5) < 1e-9  # the last slope continues
    assert cost.curve(10) == [cost.verify(n) for n in range(1, 11)]


def test_context_interpolates_between_the_two_measured_lengths() -> None:
    cost = CostModel(
        rows=[1, 8],
        seconds=[1.0, 1.3],
        key={},
        prefix=100,
        long_prefix=1100,
        long_seconds=[2.0, 3.0],
    )
    assert cost.verify(8) == 1.3 and cost.verify(8, 100) == 1.3  # no context: the short one
    assert cost.verify(8, 1100) == 3.0 and cost.verify(1, 1100) == 2.0
    assert abs(cost.verify(8, 600) - 2.15) < 1e-9  # halfway
    assert abs(cost.verify(8, 2100) - 4.7) < 1e-9  # attention keeps growing past the long one
    assert cost.verify(8, 10) == 1.3  # never below the short measurement
    assert cost.curve(8, 600) == [cost.verify(n, 600) for n in range(1, 9)]
    again = CostModel.from_json(json.loads(json.dumps(cost.to_json())))
    assert again == cost


def test_measure_times_a_long_context_too(tmp_path, monkeypatch) -> None:
    from tests.conftest import make_tiny_llama

    target = NativeTarget.from_hf(make_tiny_llama(max_position_embeddings=2048))
    curve = measure(target, grid=(1, 2, 4), repeats=1)
    assert curve.prefix == 128 and curve.long_prefix == 1536
    assert curve.long_seconds is not None
    assert all(lo >= sh for lo, sh in zip(curve.long_seconds, curve.seconds, strict=True))
    assert target.cache_len == 0
    small = measure(NativeTarget.from_hf(make_tiny_llama()), grid=(1, 2, 4), repeats=1)
    assert small.long_seconds is None and small.long_prefix is None  # no room for it


def test_measure_is_monotone_and_cached(tiny_llama, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ALIGNSPEC_CACHE_DIR", str(tmp_path))
    target = NativeTarget.from_hf(tiny_llama)
    curve = measure(target, grid=(1, 2, 4), repeats=1)
    assert curve.rows == [1, 2, 4]
    assert curve.seconds == sorted(curve.seconds) and curve.seconds[0] > 0
    assert target.cache_len == 0  # no request state left behind
    first = load_or_measure(target)
    path = cache_path(first.key)
    assert path.is_file() and json.loads(path.read_text())["key"] == first.key
    assert load_or_measure(target).seconds == first.seconds  # read back, not measured again
    path.write_text("{broken")
    assert load_or_measure(target).rows == first.rows  # a damaged file is measured again


def test_measure_times_every_size_in_each_pass(tiny_llama, monkeypatch) -> None:
    """Sizes are timed round-robin, so a machine that slows down or speeds up during the
    measurement (shared cloud CPUs drift by tens of percent within a minute) shifts every
    size alike instead of bending the curve."""
    target = NativeTarget.from_hf(tiny_llama)
    sizes: list[int] = []
    verify = target.verify

    def counting(root, tree, **kwargs):
        sizes.append(len(tree) + 1)
        return verify(root, tree, **kwargs)

    monkeypatch.setattr(target, "verify", counting)
    measure(target, grid=(1, 2, 4), repeats=2)
    assert sizes == [1, 2, 4] * 3  # a warm-up pass, then two timed passes
