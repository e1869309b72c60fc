"""Independent bit-level reference for the CFloat formats, written from Tesla's specification.

Pure Python with exact rationals (fractions.Fraction); it shares no code with dojo.numerics.
Spec (Tesla, "A Guide to Tesla's Configurable Floating Point Formats & Arithmetic"): a code is
sign | exponent field e (E bits) | mantissa field m (M bits); with unsigned bias b,
  e == 0: value = (-1)**s * 2**(1 - b) * m / 2**M        (zero and denormals)
  e >  0: value = (-1)**s * 2**(e - b) * (1 + m / 2**M)  (normals; no Inf/NaN codes)
Rounding to nearest goes to the closer code, ties to the code with even mantissa (even code),
and magnitudes past the largest code saturate to it.
"""

from __future__ import annotations

import bisect
import functools
from fractions import Fraction

SHAPES = {"cfp8_143": (4, 3), "cfp8_152": (5, 2), "cfp16": (5, 10)}


def ref_decode(code: int, e_bits: int, m_bits: int, bias: int) -> tuple[int, Fraction]:
    """(sign, magnitude) of `code`, sign 1 for negative (so -0 is (1, 0))."""
    sign = code >> (e_bits + m_bits)
    e = (code >> m_bits) & ((1 << e_bits) - 1)
    m = code & ((1 << m_bits) - 1)
    if e == 0:
        mag = Fraction(2) ** (1 - bias) * Fraction(m, 2**m_bits)
    else:
        mag = Fraction(2) ** (e - bias) * (1 + Fraction(m, 2**m_bits))
    return sign, mag


def ref_value(code: int, e_bits: int, m_bits: int, bias: int) -> Fraction:
    sign, mag = ref_decode(code, e_bits, m_bits, bias)
    return -mag if sign else mag


@functools.lru_cache(maxsize=64)
def ref_grid(e_bits: int, m_bits: int, bias: int) -> tuple[list[Fraction], list[int]]:
    """All nonnegative magnitudes in increasing order, with their (positive) codes."""
    pairs = sorted(
        (ref_decode(code, e_bits, m_bits, bias)[1], code)
        for code in range(1 << (e_bits + m_bits))
    )
    return [p[0] for p in pairs], [p[1] for p in pairs]


def ref_encode(x: Fraction | float, e_bits: int, m_bits: int, bias: int, neg: bool) -> int:
    """Nearest-even code of the exact value `x`; `neg` says whether the sign bit is set
    (pass True for -0.0, which has the same magnitude as +0.0)."""
    mags, codes = ref_grid(e_bits, m_bits, bias)
    a = abs(Fraction(x))
    i = bisect.bisect_left(mags, a)
    if i == len(mags):
        code = codes[-1]  # saturate
    elif mags[i] == a or i == 0:
        code = codes[i]
    else:
        lo, hi = mags[i - 1], mags[i]
        if a - lo < hi - a:
            code = codes[i - 1]
        elif hi - a < a - lo:
            code = codes[i]
        else:
            code = codes[i - 1] if codes[i - 1] % 2 == 0 else codes[i]
    return code | ((1 << (e_bits + m_bits)) if neg else 0)


def ref_quantize(x: float, e_bits: int, m_bits: int, bias: int) -> float:
    """Nearest-even value of float `x` as a Python float (signed zero kept)."""
    neg = x < 0 or (x == 0 and str(x).startswith("-"))
    sign, mag = ref_decode(ref_encode(Fraction(x), e_bits, m_bits, bias, neg),
                           e_bits, m_bits, bias)
    return -float(mag) if sign else float(mag)


def ref_neighbours(x: float, e_bits: int, m_bits: int, bias: int) -> tuple[float, float]:
    """The two grid values around `x` (equal when x is on the grid; both max when saturating)."""
    mags, _ = ref_grid(e_bits, m_bits, bias)
    a = abs(Fraction(x))
    i = bisect.bisect_left(mags, a)
    if i == len(mags):
        lo = hi = mags[-1]
    elif mags[i] == a:
        lo = hi = a
    else:
        lo, hi = mags[i - 1], mags[i]
    if x < 0:
        return -float(hi), -float(lo)
    return float(lo), float(hi)
