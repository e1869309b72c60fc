"""Encode, decode and quantize tensors in Dojo's number formats (vectorised torch, any shape).

Contracts shared by every function here:
- Inputs are float32, bfloat16 or float16 tensors (float64 is refused: converting it to float32
  first would round twice). Work happens in float32, where every value of every format here is
  exact (CFloat magnitudes lie in 2**-72 .. 2**32).
- `bias` is the exponent bias: an int 0..63 for CFloat formats, None for the format's default
  (7 for cfp8_143, 15 for cfp8_152 and cfp16). BF16/FP32 have a fixed bias; pass None.
- Nearest rounding is round-half-to-even: a tie goes to the even mantissa code, also across the
  denormal/normal and binade boundaries.
- CFloat has no Inf/NaN: magnitudes beyond the largest value (including +-Inf) saturate to
  +-max_value. NaN has no code: `encode` raises DojoError on NaN; `quantize` raises too unless
  `nan="keep"`, which passes NaN through (a training loop may prefer to detect it itself).
- Values below half the smallest denormal round to a zero that keeps the input's sign (-0.0 for
  negative inputs), matching the sign bit of the code `encode` produces.
- BF16/FP32 follow IEEE: Inf and NaN propagate; bf16 nearest rounding is round-half-to-even.

Codes are the unsigned integer value of the bit pattern (sign in the top bit): torch.uint8 for
8-bit formats, torch.int32 holding 0..65535 for 16-bit formats (torch's uint16 supports too few
ops), torch.int64 holding 0..2**32-1 for fp32.
"""

from __future__ import annotations

import math

import torch

from dojo.errors import DojoError
from dojo.numerics.formats import MAX_CFLOAT_BIAS, NumberFormat, get_format

_INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ROUNDINGS = ("nearest", "stochastic")
_NAN_MODES = ("raise", "keep")


def quantize(
    x: torch.Tensor,
    fmt: str | NumberFormat,
    bias: int | None = None,
    rounding: str = "nearest",
    generator: torch.Generator | None = None,
    *,
    nan: str = "raise",
) -> torch.Tensor:
    """Round `x` onto the grid of `fmt` with exponent `bias`; returns float32 of x's shape.

    `rounding="stochastic"` rounds a magnitude up to the next grid point with probability
    (|x| - lo) / (hi - lo), drawing uniforms from `generator` (torch's default generator if None),
    so results are reproducible for a seeded generator and unbiased in expectation except where
    the result saturates at max_value. The uniforms have 24 bits, so the probability is exact to
    2**-24 of a grid step.
    """
    f = get_format(fmt)
    b = f.resolve_bias(bias)
    _check_choice("rounding", rounding, _ROUNDINGS)
    _check_choice("nan", nan, _NAN_MODES)
    x32 = _as_float32(x)
    if f.has_inf_nan and rounding == "nearest" and f.exponent_bits == 8 and f.mantissa_bits == 7:
        # torch's own cast rounds half to even with IEEE Inf/NaN: the same values as the bit
        # arithmetic of _ieee_quantize (the tests check it against that cast), several times faster.
        return x32.to(torch.bfloat16).to(torch.float32)
    if f.has_inf_nan:
        return _ieee_quantize(x32, f, rounding, generator)
    if nan == "raise":
        _refuse_nan(x32, f)
    return _cfloat_round(x32, f, b, rounding, generator)


def encode(x: torch.Tensor, fmt: str | NumberFormat, bias: int | None = None) -> torch.Tensor:
    """Codes of `x` rounded to nearest-even in `fmt`; dtype per the module docstring.

    CFloat: raises DojoError on NaN; Inf saturates to the largest code of its sign.
    """
    f = get_format(fmt)
    b = f.resolve_bias(bias)
    x32 = _as_float32(x)
    if f.has_inf_nan:
        return _ieee_encode(x32, f)
    _refuse_nan(x32, f)
    q = _cfloat_round(x32, f, b, "nearest", None).abs()
    bits = q.view(torch.int32)
    m_bits = f.mantissa_bits
    normal = q >= f.min_normal(b)
    e_field = torch.where(normal, (bits >> 23) - 127 + b, 0)
    m_normal = (bits >> (23 - m_bits)) & ((1 << m_bits) - 1)
    m_denormal = (q * 2.0 ** (b - 1 + m_bits)).to(torch.int32)  # exact: q is a denormal multiple
    mantissa = torch.where(normal, m_normal, m_denormal)
    sign = torch.signbit(x32).to(torch.int32)  # -0.0 and negative underflow keep the sign bit
    code = (sign << (f.exponent_bits + m_bits)) | (e_field << m_bits) | mantissa
    return code.to(torch.uint8 if f.bits == 8 else torch.int32)


def decode(codes: torch.Tensor, fmt: str | NumberFormat, bias: int | None = None) -> torch.Tensor:
    """Float32 values of integer `codes` in `fmt`; raises DojoError for codes out of range."""
    f = get_format(fmt)
    b = f.resolve_bias(bias)
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise DojoError(f"decode({f.name}): codes have dtype {codes.dtype}: expected integers")
    c = codes.to(torch.int64)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= (1 << f.bits)):
        raise DojoError(
            f"decode({f.name}): codes span {int(c.min())}..{int(c.max())}: "
            f"expected 0..{(1 << f.bits) - 1}"
        )
    if f.has_inf_nan:
        return _ieee_decode(c, f)
    m_bits, e_bits = f.mantissa_bits, f.exponent_bits
    c32 = c.to(torch.int32)
    negative = ((c32 >> (e_bits + m_bits)) & 1).bool()
    e_field = (c32 >> m_bits) & ((1 << e_bits) - 1)
    mantissa = c32 & ((1 << m_bits) - 1)
    denormal = mantissa.to(torch.float32) * 2.0 ** (1 - b - m_bits)
    significand = (mantissa + (1 << m_bits)).to(torch.float32)
    normal = significand * _pow2(e_field - b - m_bits)  # exact: both factors are exact in fp32
    magnitude = torch.where(e_field == 0, denormal, normal)
    return torch.where(negative, -magnitude, magnitude)  # -0.0 for the negative zero code


def bias_for_amax(amax: float, fmt: str | NumberFormat, margin: float = 0.0) -> int:
    """Largest bias (finest grid) whose max_value still covers `amax * 2**margin`.

    `amax` is an absolute maximum (same units as the tensor); `margin` is headroom in binades
    (factors of two) for growth between the step that measured amax and the step that uses the
    bias. The result is clamped to 0..63; amax == 0 gives the format's default bias. Raises
    DojoError for a format with a fixed bias, a negative or non-finite amax, or a bad margin.
    """
    f = get_format(fmt)
    if not f.configurable_bias:
        raise DojoError(f"bias_for_amax: format {f.name} has a fixed bias")
    if not math.isfinite(amax) or amax < 0:
        raise DojoError(f"bias_for_amax({f.name}): amax = {amax!r}: expected a finite number >= 0")
    if not math.isfinite(margin) or margin < 0:
        raise DojoError(f"bias_for_amax({f.name}): margin = {margin!r}: expected a number >= 0")
    if amax == 0:
        return f.default_bias
    top_field = (1 << f.exponent_bits) - 1
    top_significand = 2.0 - 2.0 ** -f.mantissa_bits
    # max_value(b) = 2**(top_field - b) * top_significand >= amax * 2**margin, largest such b.
    bound = top_field + math.log2(top_significand) - math.log2(amax) - margin
    bias = math.floor(bound)
    if f.max_value(min(max(bias, 0), MAX_CFLOAT_BIAS)) < amax * 2.0**margin:
        bias -= 1  # log2 rounding put us one binade too fine
    return min(max(bias, 0), MAX_CFLOAT_BIAS)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DojoError(f"quantize: {name} = {value!r}: expected one of {', '.join(choices)}")


def _as_float32(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dtype not in _INPUT_DTYPES:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise DojoError(f"expected a float32, bfloat16 or float16 tensor, got {got}")
    return x.to(torch.float32).contiguous()


def _refuse_nan(x32: torch.Tensor, f: NumberFormat) -> None:
    if bool(torch.isnan(x32).any()):
        raise DojoError(f"{f.name} has no NaN code: input holds NaN (quantize(..., nan='keep') "
                        "passes NaN through)")


def _pow2(k: torch.Tensor) -> torch.Tensor:
    """2.0**k in float32, exactly, for int32 `k` in -126..127 (built from the exponent field)."""
    return (k + 127).bitwise_left_shift_(23).view(torch.float32)


def _cfloat_round(
    x32: torch.Tensor, f: NumberFormat, bias: int, rounding: str, gen: torch.Generator | None
) -> torch.Tensor:
    """Round float32 `x32` onto the CFloat grid; saturates; NaN stays NaN.

    In-place ops on fresh temporaries: this runs on every operand of every step in training.
    """
    m_bits = f.mantissa_bits
    a = x32.abs()
    # The float32 exponent field of |x| is floor(log2|x|) + 127; 0 and fp32 denormals read as 0,
    # which the clamp lifts to the format's denormal binade (fp32 denormals lie far below any
    # grid step). The clamp's top keeps the step finite for values that will saturate anyway.
    e = a.view(torch.int32) >> 23
    e.clamp_(127 + 1 - bias, 127 + f.max_exponent(bias))
    inv_step = (254 + m_bits - e).bitwise_left_shift_(23).view(torch.float32)  # 2**(M - exp)
    step = e.sub_(m_bits).bitwise_left_shift_(23).view(torch.float32)  # 2**(exp - M), exact
    a.mul_(inv_step)  # exact: scaling by a power of two; <= 2**(M+1) unless saturating
    if rounding == "nearest":
        a.round_()  # torch.round is round-half-to-even
    else:
        lower = a.floor()
        frac = a.sub_(lower)
        u = torch.rand(frac.shape, generator=gen, device=frac.device)
        a = lower.add_(u < frac)  # up with probability = fractional part
    a.mul_(step).clamp_(max=f.max_value(bias))  # exact product; saturate; NaN propagates
    return a.copysign_(x32)


def _ieee_check(f: NumberFormat) -> None:
    if f.exponent_bits != 8 or f.mantissa_bits > 23:
        raise DojoError(f"format {f.name}: only IEEE formats with fp32's exponent are supported")


def _ieee_quantize(
    x32: torch.Tensor, f: NumberFormat, rounding: str, gen: torch.Generator | None
) -> torch.Tensor:
    """Round float32 to an IEEE format with 8 exponent bits by dropping low mantissa bits."""
    _ieee_check(f)
    drop = 23 - f.mantissa_bits
    if drop == 0:
        return x32.clone()
    bits = x32.view(torch.int32)
    low_mask = (1 << drop) - 1
    if rounding == "nearest":
        # Adding 0x7FFF + lsb (bf16) then truncating is round-half-to-even on the bit pattern.
        add = (bits >> drop).bitwise_and_(1).add_(low_mask >> 1)
    else:
        add = torch.randint(0, 1 << drop, x32.shape, generator=gen, device=x32.device,
                            dtype=torch.int32)  # up with P = dropped bits / 2**drop
    # Rounding acts on the magnitude's bits; a carry into the exponent field is the next binade
    # (or Inf past the largest finite value), which is IEEE behaviour.
    rounded = add.add_(bits & 0x7FFFFFFF).bitwise_and_(~low_mask).bitwise_or_(bits & ~0x7FFFFFFF)
    nan = torch.isnan(x32)
    if bool(nan.any()):
        # A NaN keeps its sign and gets the quiet bit, so dropping payload bits cannot make Inf.
        quiet_nan = (bits | (1 << 22)).bitwise_and_(~low_mask)
        rounded = torch.where(nan, quiet_nan, rounded)
    return rounded.view(torch.float32)


def _ieee_encode(x32: torch.Tensor, f: NumberFormat) -> torch.Tensor:
    _ieee_check(f)
    bits = _ieee_quantize(x32, f, "nearest", None).view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    if f.bits == 32:
        return bits
    return (bits >> (32 - f.bits)).to(torch.int32)


def _ieee_decode(c: torch.Tensor, f: NumberFormat) -> torch.Tensor:
    _ieee_check(f)
    bits32 = c << (32 - f.bits)
    bits32 = torch.where(bits32 >= 1 << 31, bits32 - (1 << 32), bits32)  # to signed int32 range
    return bits32.to(torch.int32).view(torch.float32).clone()
