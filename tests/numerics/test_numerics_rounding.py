"""quantize (nearest-even) against the reference: midpoints, neighbours, underflow, saturation."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numerics_ref import SHAPES, ref_grid, ref_quantize

from dojo.numerics import get_format, quantize

BIASES = (0, 7, 15, 31, 63)


def _hard_cases(name: str, bias: int) -> list[float]:
    """Every grid point, every midpoint and the float32 values just either side of it, signed."""
    e, m = SHAPES[name]
    mags = [float(v) for v in ref_grid(e, m, bias)[0]]
    mids = torch.tensor([(lo + hi) / 2 for lo, hi in itertools.pairwise(mags)])
    top = mags[-1] + (mags[-1] - mags[-2]) / 2  # midpoint to the first value past the range
    mids = torch.cat([mids, torch.tensor([top, mags[1] / 2])])
    up = torch.nextafter(mids, torch.tensor(math.inf))
    down = torch.nextafter(mids, torch.tensor(0.0))
    pos = torch.cat([torch.tensor(mags), mids, up, down, torch.tensor([top * 4, 1e38, math.inf])])
    return torch.cat([pos, -pos]).tolist()


def _check(name: str, bias: int, xs: list[float]) -> None:
    e, m = SHAPES[name]
    got = quantize(torch.tensor(xs, dtype=torch.float32), name, bias)
    want = [ref_quantize(x if math.isfinite(x) else math.copysign(1e300, x), e, m, bias)
            for x in xs]
    for x, g, w in zip(xs, got.tolist(), want, strict=True):
        assert g == w and math.copysign(1, g) == math.copysign(1, w), (name, bias, x, g, w)


@pytest.mark.parametrize("name", ("cfp8_143", "cfp8_152"))
@pytest.mark.parametrize("bias", BIASES)
def test_8bit_nearest_even_on_every_midpoint_and_its_neighbours(name: str, bias: int) -> None:
    _check(name, bias, _hard_cases(name, bias))


def test_named_edge_cases_cfp8_143_default_bias() -> None:
    f = get_format("cfp8_143")
    tiny = f.min_denormal()  # 2**-9
    cases = {
        1.0625: 1.0,  # tie between 1.0 (m=0) and 1.125 (m=1): even mantissa
        1.1875: 1.25,  # tie between 1.125 (m=1) and 1.25 (m=2)
        1.0625 + 2**-20: 1.125,  # just above the tie
        tiny: tiny,  # smallest denormal is on the grid
        tiny / 2: 0.0,  # tie with zero goes to zero (even code)
        tiny / 2 * (1 + 2**-20): tiny,
        tiny / 4: 0.0,  # underflow
        -tiny / 4: -0.0,  # underflow keeps the sign
        f.min_normal() - tiny / 2: f.min_normal(),  # top denormal (odd) vs min normal (even)
        480.0: 480.0,
        500.0: 480.0,  # past the midpoint to the next binade (496): saturates, no Inf
        1e30: 480.0,
        -1e30: -480.0,
    }
    got = quantize(torch.tensor(list(cases)), "cfp8_143").tolist()
    assert got == list(cases.values())
    assert math.copysign(1, got[7]) == -1.0


@pytest.mark.parametrize("bias", (0, 15, 63))
def test_cfp16_random_and_hard_values_match_the_reference(bias: int) -> None:
    f = get_format("cfp16")
    rng = random.Random(bias)
    lo, hi = math.log2(f.min_denormal(bias)) - 2, math.log2(f.max_value(bias)) + 2
    xs = [rng.choice((-1, 1)) * 2.0 ** rng.uniform(lo, hi) for _ in range(1500)]
    xs = torch.tensor(xs, dtype=torch.float32).tolist()  # exact float32 inputs
    mags = [float(v) for v in ref_grid(5, 10, bias)[0]]
    picks = [*range(0, 40), *range(1000, 1060), *range(len(mags) - 40, len(mags) - 1)]
    xs += [(mags[i] + mags[i + 1]) / 2 for i in picks]  # ties, incl. denormal/normal boundary
    _check("cfp16", bias, xs)


def test_bf16_matches_torch_on_random_bit_patterns_and_ties() -> None:
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(-(2**31), 2**31, (200_000,), generator=g, dtype=torch.int64)
    x = bits.to(torch.int32).view(torch.float32)
    x = x[~torch.isnan(x)]  # NaN payload handling is checked separately
    ties = torch.tensor([0x3F808000, 0x3F818000, 0x00008000, 0x00018000, 0x7F7F8000, 0x7F7FFFFF],
                        dtype=torch.int32).view(torch.float32)
    for v in (x, ties, -ties):
        want = v.to(torch.bfloat16).float()
        got = quantize(v, "bf16")
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))


def test_inputs_of_any_shape_and_dtype() -> None:
    x = torch.randn(2, 3, 4, 5)
    base = quantize(x, "cfp8_143", 9)
    assert base.shape == x.shape and base.dtype == torch.float32
    assert torch.equal(quantize(x.transpose(1, 3), "cfp8_143", 9), base.transpose(1, 3))
    assert quantize(torch.tensor(0.3), "cfp8_152").shape == ()
    assert quantize(torch.empty(0, 4), "cfp16").shape == (0, 4)
    for dtype in (torch.bfloat16, torch.float16):
        low = x.to(dtype)
        assert torch.equal(quantize(low, "cfp8_152", 20), quantize(low.float(), "cfp8_152", 20))
    assert torch.equal(quantize(x, "fp32"), x)


@settings(max_examples=300, deadline=None)
@given(
    x=st.floats(width=32, allow_nan=False, allow_infinity=False),
    name=st.sampled_from(("cfp8_143", "cfp8_152")),
    bias=st.integers(0, 63),
)
def test_property_matches_reference(x: float, name: str, bias: int) -> None:
    _check(name, bias, [x])


@settings(max_examples=100, deadline=None)
@given(
    xs=st.lists(st.floats(width=32, allow_nan=False), min_size=2, max_size=40),
    name=st.sampled_from(("cfp8_143", "cfp8_152", "cfp16")),
    bias=st.integers(0, 63),
)
def test_property_monotone_and_idempotent(xs: list[float], name: str, bias: int) -> None:
    x = torch.tensor(sorted(xs), dtype=torch.float32)
    q = quantize(x, name, bias)
    assert bool((q[1:] >= q[:-1]).all())
    assert torch.equal(quantize(q, name, bias), q)
    assert bool((q.abs() <= get_format(name).max_value(bias)).all())
