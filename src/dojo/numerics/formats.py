"""Dojo's number formats as data: one frozen record per format, looked up by name.

Source of the CFloat formats: Tesla, "Tesla Dojo Technology: A Guide to Tesla's Configurable
Floating Point Formats & Arithmetic". CFloat8 comes in two shapes (1-4-3 and 1-5-2 sign-exponent-
mantissa bits) and CFloat16 signed is 1-5-10; each carries an unsigned 6-bit exponent bias (0..63)
that software sets per tensor. CFloat codes are all finite: there is no Inf and no NaN; exponent
field 0 encodes zero and denormals (gradual underflow). BF16 and FP32 are the IEEE formats.
"""

from __future__ import annotations

import dataclasses

from dojo.errors import DojoError
from dojo.registry import Registry

MAX_CFLOAT_BIAS = 63  # the bias is an unsigned 6-bit field


@dataclasses.dataclass(frozen=True, kw_only=True)
class NumberFormat:
    """A binary floating-point format: sign bit, `exponent_bits`, `mantissa_bits`.

    `default_bias` is the bias used when none is given (IEEE-like 2**(E-1) - 1). `configurable_bias`
    says whether a per-tensor bias in 0..63 may be chosen (CFloat) or the bias is fixed (IEEE).
    `has_inf_nan` is True for IEEE formats, whose all-ones exponent field encodes Inf/NaN; for
    CFloat it is False and every code is a finite number.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    default_bias: int
    has_inf_nan: bool
    configurable_bias: bool
    description: str = ""

    @property
    def bits(self) -> int:
        """Total width of one code in bits."""
        return 1 + self.exponent_bits + self.mantissa_bits

    def resolve_bias(self, bias: int | None) -> int:
        """The bias to use: `bias`, or the default when None; raises DojoError if out of range."""
        if bias is None:
            return self.default_bias
        if isinstance(bias, bool) or not isinstance(bias, int):
            raise DojoError(f"format {self.name}: bias = {bias!r}: expected an integer or None")
        if self.configurable_bias:
            if not 0 <= bias <= MAX_CFLOAT_BIAS:
                raise DojoError(
                    f"format {self.name}: bias = {bias}: expected an integer 0..{MAX_CFLOAT_BIAS}"
                )
        elif bias != self.default_bias:
            raise DojoError(
                f"format {self.name}: bias = {bias}: this format's bias is fixed at "
                f"{self.default_bias} (pass None)"
            )
        return bias

    def max_exponent(self, bias: int | None = None) -> int:
        """Unbiased exponent of the top binade: all-ones field for CFloat, one less for IEEE."""
        top_field = (1 << self.exponent_bits) - 1 - (1 if self.has_inf_nan else 0)
        return top_field - self.resolve_bias(bias)

    def max_value(self, bias: int | None = None) -> float:
        """Largest finite magnitude: 2**emax * (2 - 2**-M). Exact as a Python float."""
        return 2.0 ** self.max_exponent(bias) * (2.0 - 2.0 ** -self.mantissa_bits)

    def min_normal(self, bias: int | None = None) -> float:
        """Smallest normal magnitude: 2**(1 - bias)."""
        return 2.0 ** (1 - self.resolve_bias(bias))

    def min_denormal(self, bias: int | None = None) -> float:
        """Smallest nonzero magnitude: 2**(1 - bias - M)."""
        return 2.0 ** (1 - self.resolve_bias(bias) - self.mantissa_bits)


FORMATS: Registry[NumberFormat] = Registry("number format")


def _add(fmt: NumberFormat) -> None:
    FORMATS.add(fmt.name, fmt)


_add(NumberFormat(name="cfp8_143", exponent_bits=4, mantissa_bits=3, default_bias=7,
                  has_inf_nan=False, configurable_bias=True,
                  description="CFloat8 1-4-3: forward activations and weights"))
_add(NumberFormat(name="cfp8_152", exponent_bits=5, mantissa_bits=2, default_bias=15,
                  has_inf_nan=False, configurable_bias=True,
                  description="CFloat8 1-5-2: wider range for gradients"))
_add(NumberFormat(name="cfp16", exponent_bits=5, mantissa_bits=10, default_bias=15,
                  has_inf_nan=False, configurable_bias=True,
                  description="CFloat16 signed 1-5-10"))
_add(NumberFormat(name="bf16", exponent_bits=8, mantissa_bits=7, default_bias=127,
                  has_inf_nan=True, configurable_bias=False,
                  description="IEEE-style bfloat16"))
_add(NumberFormat(name="fp32", exponent_bits=8, mantissa_bits=23, default_bias=127,
                  has_inf_nan=True, configurable_bias=False,
                  description="IEEE 754 binary32"))


def get_format(fmt: str | NumberFormat) -> NumberFormat:
    """The format called `fmt` (or `fmt` itself); raises UnknownNameError listing known formats."""
    if isinstance(fmt, NumberFormat):
        return fmt
    return FORMATS.get(fmt)
