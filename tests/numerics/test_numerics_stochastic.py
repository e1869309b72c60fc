"""Stochastic rounding: unbiased in expectation, seeded, and always one of the two neighbours."""

from __future__ import annotations

import math

import pytest
import torch
from numerics_ref import SHAPES, ref_neighbours

from dojo.numerics import get_format, quantize

N = 200_000  # samples per value; the mean's standard error is step * 0.5 / sqrt(N)


def _values(name: str, bias: int) -> list[float]:
    f = get_format(name)
    tiny, top = f.min_denormal(bias), f.max_value(bias)
    return [0.3, -0.3, 1.01, 2.9, -7.7, tiny * 0.37, -tiny * 2.6, f.min_normal(bias) * 0.9,
            top * 0.97, 1e-3]


@pytest.mark.parametrize(("name", "bias"), [("cfp8_143", 7), ("cfp8_152", 15), ("cfp8_152", 30),
                                            ("cfp16", 15)])
def test_mean_equals_input_and_results_are_neighbours(name: str, bias: int) -> None:
    e, m = SHAPES[name]
    g = torch.Generator().manual_seed(1)
    for x in _values(name, bias):
        x32 = torch.tensor(x, dtype=torch.float32)
        x = x32.item()  # the exact float32 input
        lo, hi = ref_neighbours(x, e, m, bias)
        q = quantize(x32.expand(N), name, bias, rounding="stochastic", generator=g)
        assert bool(((q == lo) | (q == hi)).all()), (name, x, lo, hi)
        if lo == hi:
            continue
        p = (x - lo) / (hi - lo)  # the probability of rounding to hi
        sigma = (hi - lo) * math.sqrt(p * (1 - p) / N) + (hi - lo) * 2**-24
        assert abs(q.double().mean().item() - x) < 5 * sigma, (name, x)


def test_grid_values_are_fixed_points() -> None:
    x = quantize(torch.randn(10_000) * 10, "cfp8_143")
    assert torch.equal(quantize(x, "cfp8_143", rounding="stochastic"), x)


def test_same_seed_same_result_other_seed_differs() -> None:
    x = torch.randn(64, 64)

    def run(seed: int, name: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return quantize(x, name, 12, rounding="stochastic", generator=g) if name != "bf16" \
            else quantize(x, name, rounding="stochastic", generator=g)

    for name in ("cfp8_152", "bf16"):
        assert torch.equal(run(5, name), run(5, name))
        assert not torch.equal(run(5, name), run(6, name))


def test_saturation_clamps_stochastic_results() -> None:
    top = get_format("cfp8_152").max_value()
    q = quantize(torch.full((1000,), top * 1.1), "cfp8_152", rounding="stochastic")
    assert bool((q == top).all())


def test_bf16_stochastic_is_unbiased_and_neighbouring() -> None:
    x = torch.tensor([1.0 + 2**-9, -3.0e-3, 1.7e20], dtype=torch.float32)
    g = torch.Generator().manual_seed(2)
    for v in x:
        toward_zero = (v.view(torch.int32) & ~0xFFFF).view(torch.float32)  # drop 16 low bits
        away = torch.nextafter(toward_zero.to(torch.bfloat16),
                               toward_zero.to(torch.bfloat16) * 2).float()  # next bf16 outward
        q = quantize(v.expand(N), "bf16", rounding="stochastic", generator=g)
        assert set(q.unique().tolist()) == {toward_zero.item(), away.item()}
        step = abs(away.item() - toward_zero.item())
        assert abs(q.double().mean().item() - v.item()) < 5 * step * 0.5 / math.sqrt(N)
