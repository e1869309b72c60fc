"""Formats, decode and encode against the independent reference in numerics_ref.py."""

from __future__ import annotations

import math

import pytest
import torch
from numerics_ref import SHAPES, ref_decode, ref_encode, ref_grid, ref_value

from dojo.errors import DojoError, UnknownNameError
from dojo.numerics import FORMATS, bias_for_amax, decode, encode, get_format, quantize

BIASES = (0, 1, 7, 15, 31, 48, 63)
EIGHT_BIT = ("cfp8_143", "cfp8_152")


def test_registry_holds_the_five_formats_as_data() -> None:
    assert FORMATS.names() == ["cfp8_143", "cfp8_152", "cfp16", "bf16", "fp32"]
    for name, (e, m) in SHAPES.items():
        f = get_format(name)
        assert (f.exponent_bits, f.mantissa_bits, f.has_inf_nan) == (e, m, False)
        assert f.default_bias == 2 ** (e - 1) - 1  # IEEE-like default
    assert get_format("bf16").bits == 16 and get_format("fp32").bits == 32
    with pytest.raises(UnknownNameError, match="cfp8_143"):
        get_format("fp8")


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("bias", BIASES)
def test_range_figures_match_the_reference_grid(name: str, bias: int) -> None:
    e, m = SHAPES[name]
    f = get_format(name)
    mags, _ = ref_grid(e, m, bias)
    assert f.max_value(bias) == float(mags[-1])
    assert f.min_denormal(bias) == float(mags[1])
    assert f.min_normal(bias) == float(ref_value(1 << m, e, m, bias))


@pytest.mark.parametrize("name", EIGHT_BIT)
@pytest.mark.parametrize("bias", BIASES)
def test_every_8bit_code_decodes_like_the_reference(name: str, bias: int) -> None:
    e, m = SHAPES[name]
    codes = torch.arange(256, dtype=torch.uint8)
    got = decode(codes, name, bias)
    assert got.dtype == torch.float32
    for code in range(256):
        sign, mag = ref_decode(code, e, m, bias)
        value = got[code].item()
        assert value == float(mag) * (-1 if sign else 1), (name, bias, code)
        assert math.copysign(1.0, value) == (-1.0 if sign else 1.0), (name, bias, code)


@pytest.mark.parametrize("name", EIGHT_BIT)
@pytest.mark.parametrize("bias", BIASES)
def test_every_8bit_code_round_trips_through_encode(name: str, bias: int) -> None:
    codes = torch.arange(256, dtype=torch.uint8)
    again = encode(decode(codes, name, bias), name, bias)
    assert again.dtype == torch.uint8
    assert torch.equal(again, codes)  # includes 0x80 (-0.0) and every denormal


@pytest.mark.parametrize("bias", (0, 15, 63))
def test_every_cfp16_code_round_trips_and_decodes(bias: int) -> None:
    codes = torch.arange(1 << 16, dtype=torch.int32)
    values = decode(codes, "cfp16", bias)
    assert torch.equal(encode(values, "cfp16", bias), codes)
    for code in (0, 1, 2, 1023, 1024, 1025, 0x3C00, 0x7BFF, 0x7C00, 0x7FFF, 0x8000, 0x8001, 0xFFFF):
        assert values[code].item() == float(ref_value(code, 5, 10, bias)), code


def test_encode_matches_the_reference_on_signed_values() -> None:
    xs = [0.0, -0.0, 1.0, -1.0, 0.3, -0.3, 1e-6, -1e-6, 255.0, -700.0, 1e30, -1e30,
          float("inf"), float("-inf")]
    for name in EIGHT_BIT:
        e, m = SHAPES[name]
        got = encode(torch.tensor(xs), name, 7).tolist()
        want = [ref_encode(x if math.isfinite(x) else math.copysign(1e300, x), e, m, 7,
                           math.copysign(1.0, x) < 0) for x in xs]
        assert got == want, name


def test_ieee_codes_match_torch_bit_patterns() -> None:
    x = torch.randn(1000) * 1e3
    x[:4] = torch.tensor([0.0, -0.0, float("inf"), float("-inf")])
    b16 = x.to(torch.bfloat16).view(torch.int16).to(torch.int32) & 0xFFFF
    assert torch.equal(encode(x, "bf16"), b16)
    assert torch.equal(decode(b16, "bf16"), x.to(torch.bfloat16).float())
    f32 = x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    assert torch.equal(encode(x, "fp32"), f32)
    assert torch.equal(decode(f32, "fp32").view(torch.int32), x.view(torch.int32))


def test_bad_inputs_raise_dojo_errors() -> None:
    x = torch.ones(3)
    with pytest.raises(DojoError, match="bias = 64"):
        quantize(x, "cfp8_143", 64)
    with pytest.raises(DojoError, match="bias = -1"):
        encode(x, "cfp8_152", -1)
    with pytest.raises(DojoError, match="fixed"):
        quantize(x, "bf16", 3)
    with pytest.raises(DojoError, match="float64"):
        quantize(x.double(), "cfp8_143")
    with pytest.raises(DojoError, match="rounding"):
        quantize(x, "cfp8_143", rounding="up")
    with pytest.raises(DojoError, match=r"expected 0\.\.255"):
        decode(torch.tensor([256]), "cfp8_143")
    with pytest.raises(DojoError, match="integers"):
        decode(x, "cfp8_143")


def test_nan_is_refused_unless_kept() -> None:
    x = torch.tensor([1.0, float("nan")])
    with pytest.raises(DojoError, match="NaN"):
        encode(x, "cfp8_143")
    with pytest.raises(DojoError, match="NaN"):
        quantize(x, "cfp16")
    kept = quantize(x, "cfp8_152", nan="keep")
    assert kept[0].item() == 1.0 and math.isnan(kept[1].item())
    assert math.isnan(quantize(x, "bf16")[1].item())  # IEEE formats propagate NaN
    payload = torch.tensor([0x7F800001], dtype=torch.int32).view(torch.float32)  # low-bit NaN
    assert math.isnan(quantize(payload, "bf16").item())
    assert int(encode(payload, "bf16").item()) & 0x7F == 0x40  # quiet NaN, not Inf (0x7F80)


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("amax", (1e-12, 3e-5, 0.7, 1.0, 3.0, 480.0, 6e4, 1e12))
def test_bias_for_amax_picks_the_finest_grid_that_covers_amax(name: str, amax: float) -> None:
    e, m = SHAPES[name]
    bias = bias_for_amax(amax, name)
    top = {b: float(ref_value((1 << (e + m)) - 1, e, m, b)) for b in range(64)}  # largest code
    covering = [b for b in range(64) if top[b] >= amax]
    assert bias == (max(covering) if covering else 0)
    margin_bias = bias_for_amax(amax, name, margin=2.0)
    covering = [b for b in range(64) if top[b] >= 4 * amax]
    assert margin_bias == (max(covering) if covering else 0)


def test_bias_for_amax_edges() -> None:
    assert bias_for_amax(0.0, "cfp8_143") == 7
    with pytest.raises(DojoError, match="amax"):
        bias_for_amax(float("inf"), "cfp8_143")
    with pytest.raises(DojoError, match="fixed"):
        bias_for_amax(1.0, "bf16")
