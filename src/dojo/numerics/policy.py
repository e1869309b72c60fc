"""Precision policies: which number format each matmul/conv operand uses, by name.

A `PrecisionPolicy` is data: for the forward activations, the weights, the incoming gradients
(the gradient of the layer's output, in backward) and the layer's output, an `OperandRule` names a
format, a rounding mode and a scaling mode, or None to leave that operand in FP32. Accumulation and
master weights are always FP32: operands are rounded copies, the parameters stay FP32.

Scaling "delayed" picks a per-tensor exponent bias from an `AmaxHistory` (the largest |x| seen
over the last `amax_window` uses of that operand), like FP8 delayed scaling; "fixed" uses the
format's default bias. `TensorQuantizer` is the small mutable state that applies one rule.
Reasons for the registered choices are in docs/numerics.md.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch

from dojo.config import check, parse
from dojo.errors import DojoError
from dojo.numerics.formats import FORMATS, get_format
from dojo.numerics.quantize import bias_for_amax, quantize
from dojo.registry import Registry

ROUNDINGS = ("nearest", "stochastic")
SCALINGS = ("fixed", "delayed")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OperandRule:
    """How one operand is rounded: format name, rounding mode, scaling mode."""

    fmt: str = dataclasses.field(metadata=check(choices=tuple(FORMATS.names())))
    rounding: str = dataclasses.field(default="nearest", metadata=check(choices=ROUNDINGS))
    scaling: str = dataclasses.field(default="fixed", metadata=check(choices=SCALINGS))

    def __post_init__(self) -> None:
        f = get_format(self.fmt)
        if self.rounding not in ROUNDINGS:
            raise DojoError(f"operand rule: rounding = {self.rounding!r}: expected one of "
                            f"{', '.join(ROUNDINGS)}")
        if self.scaling not in SCALINGS:
            raise DojoError(f"operand rule: scaling = {self.scaling!r}: expected one of "
                            f"{', '.join(SCALINGS)}")
        if self.scaling == "delayed" and not f.configurable_bias:
            raise DojoError(f"operand rule: scaling 'delayed' needs a configurable bias; "
                            f"format {f.name} has a fixed one (use scaling 'fixed')")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrecisionPolicy:
    """Formats of the operands of every matmul/conv; None leaves an operand in FP32.

    `activations`: the layer input (forward); `weights`: a rounded copy of the FP32 master
    weight; `grads`: the gradient arriving at the layer's output (backward), which then feeds both
    the input-gradient and weight-gradient products; `outputs`: the FP32-accumulated result.
    `amax_window` is the delayed-scaling history length (uses of the operand); `margin` is the
    headroom in binades (factors of 2) above the history's amax.
    """

    name: str
    activations: OperandRule | None = None
    weights: OperandRule | None = None
    grads: OperandRule | None = None
    outputs: OperandRule | None = None
    amax_window: int = dataclasses.field(default=16, metadata=check(ge=1))
    margin: float = dataclasses.field(default=0.0, metadata=check(ge=0))
    description: str = ""

    def __post_init__(self) -> None:
        if self.amax_window < 1:
            raise DojoError(f"policy {self.name}: amax_window = {self.amax_window}: expected >= 1")
        if not math.isfinite(self.margin) or self.margin < 0:
            raise DojoError(f"policy {self.name}: margin = {self.margin}: expected >= 0")


def policy_from_mapping(data: Mapping[str, Any], source: str) -> PrecisionPolicy:
    """Build a policy from a TOML/JSON-style table; ConfigError names `source` and the field."""
    return parse(PrecisionPolicy, data, source)


POLICIES: Registry[PrecisionPolicy] = Registry("precision policy")


def _add(policy: PrecisionPolicy) -> None:
    POLICIES.add(policy.name, policy)


_BF16 = OperandRule(fmt="bf16")
_add(PrecisionPolicy(name="fp32", description="plain FP32: no operand is rounded"))
_add(PrecisionPolicy(
    name="bf16", activations=_BF16, weights=_BF16, grads=_BF16, outputs=_BF16,
    description="BF16 operands and results, FP32 accumulation and master weights",
))
_add(PrecisionPolicy(
    name="cfp8",
    activations=OperandRule(fmt="cfp8_143", scaling="delayed"),
    weights=OperandRule(fmt="cfp8_143", scaling="delayed"),
    grads=OperandRule(fmt="cfp8_152", rounding="stochastic", scaling="delayed"),
    amax_window=16,
    margin=0.0,
    description="CFP8 1-4-3 activations/weights, CFP8 1-5-2 stochastic gradients, per-tensor "
                "delayed bias, FP32 accumulation and master weights",
))


def get_policy(policy: str | PrecisionPolicy) -> PrecisionPolicy:
    """The policy called `policy` (or `policy` itself); UnknownNameError lists known names."""
    return policy if isinstance(policy, PrecisionPolicy) else POLICIES.get(policy)


class AmaxHistory:
    """The last `window` absolute maxima of one operand (delayed-scaling state)."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise DojoError(f"amax history: window = {window}: expected >= 1")
        self._values: collections.deque[float] = collections.deque(maxlen=window)

    def record(self, amax: float) -> None:
        """Remember `amax`; non-finite values are skipped so one overflow cannot poison it."""
        if math.isfinite(amax):
            self._values.append(amax)

    def amax(self) -> float | None:
        """The largest amax in the window, or None before the first record."""
        return max(self._values) if self._values else None

    def __len__(self) -> int:
        return len(self._values)


class TensorQuantizer:
    """Applies one `OperandRule` to successive tensors, keeping its amax history and RNG.

    With delayed scaling the bias comes from the history *before* this tensor is recorded (the
    tensor's own amax is used only on the first call, when the history is empty). Stochastic
    rounding draws from a generator seeded with `seed`, created on the tensor's device.
    """

    def __init__(self, rule: OperandRule, *, window: int = 16, margin: float = 0.0,
                 seed: int = 0) -> None:
        self.rule = rule
        self.margin = margin
        self.history = AmaxHistory(window)
        self.seed = seed
        self.last_bias: int | None = None
        self._generator: torch.Generator | None = None

    def bias_for(self, x: torch.Tensor) -> int | None:
        """Bias to use for `x` (None for fixed scaling) and record x's amax."""
        if self.rule.scaling == "fixed":
            return None
        current = float(x.detach().abs().max()) if x.numel() else 0.0
        past = self.history.amax()
        used = past if past is not None else (current if math.isfinite(current) else 0.0)
        self.history.record(current)
        return bias_for_amax(used, self.rule.fmt, self.margin)

    def state_dict(self) -> dict[str, Any]:
        """Everything that makes the next rounding reproducible: history, last bias, RNG."""
        gen = self._generator.get_state() if self._generator is not None else None
        return {"history": list(self.history._values), "last_bias": self.last_bias,
                "generator": gen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.history._values.clear()
        self.history._values.extend(state["history"])
        self.last_bias = state["last_bias"]
        if state["generator"] is not None:
            self._generator = torch.Generator().set_state(state["generator"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """`x` rounded per the rule, in x's dtype (meant for FP32 tensors)."""
        bias = self.bias_for(x)
        self.last_bias = bias
        gen = None
        if self.rule.rounding == "stochastic":
            if self._generator is None or self._generator.device != x.device:
                self._generator = torch.Generator(device=x.device).manual_seed(self.seed)
            gen = self._generator
        q = quantize(x.detach(), self.rule.fmt, bias, self.rule.rounding, gen)
        return q.to(x.dtype)
