"""Torch building blocks that run Linear/Conv2d layers under a precision policy.

`apply_policy(model, policy)` turns every `nn.Linear` and `nn.Conv2d` in `model` into a policy
layer in place, the way `torch.nn.utils.parametrize` does: the object's class becomes a subclass
that rounds operands, so parameters (the FP32 master weights), state_dict keys, hooks and optimizer
references are unchanged. Only layers of exactly those two classes are changed, and only work done
in their `forward` is rounded (a parent that reads `.weight` directly, as nn.MultiheadAttention
does for its output projection, is not covered).

Per layer, in forward: input and weight are rounded (straight-through: their gradients pass
unchanged to the FP32 tensors), the matmul/conv accumulates in FP32, the result is rounded per
`outputs`. In backward: the incoming gradient is rounded per `grads` before it feeds both the
input-gradient and the weight-gradient products (which use the rounded forward operands).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dojo.numerics.policy import OperandRule, PrecisionPolicy, TensorQuantizer, get_policy


class _RoundStraightThrough(torch.autograd.Function):
    """Forward: round with the quantizer; backward: identity (straight-through estimator)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, quantizer: TensorQuantizer) -> torch.Tensor:
        return quantizer(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _RoundGradient(torch.autograd.Function):
    """Forward: identity; backward: round the incoming gradient with the quantizer."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, quantizer: TensorQuantizer) -> torch.Tensor:
        ctx.quantizer = quantizer
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.quantizer(grad), None


def round_operand(x: torch.Tensor, quantizer: TensorQuantizer | None) -> torch.Tensor:
    """`x` rounded by `quantizer` with a straight-through gradient; `x` itself when None."""
    return x if quantizer is None else _RoundStraightThrough.apply(x, quantizer)


def round_gradient(x: torch.Tensor, quantizer: TensorQuantizer | None) -> torch.Tensor:
    """`x` unchanged, but the gradient flowing back into it is rounded; `x` itself when None."""
    return x if quantizer is None else _RoundGradient.apply(x, quantizer)


class LayerNumerics:
    """The quantizers of one layer: activations, weights, grads, outputs (None = FP32)."""

    def __init__(self, policy: PrecisionPolicy, seed: int) -> None:
        self.policy = policy

        def make(rule: OperandRule | None, slot: int) -> TensorQuantizer | None:
            if rule is None:
                return None
            return TensorQuantizer(rule, window=policy.amax_window, margin=policy.margin,
                                   seed=seed * 4 + slot)

        self.activations = make(policy.activations, 0)
        self.weights = make(policy.weights, 1)
        self.grads = make(policy.grads, 2)
        self.outputs = make(policy.outputs, 3)

    def result(self, y: torch.Tensor) -> torch.Tensor:
        """Round the layer's FP32 result, and its incoming gradient in backward."""
        return round_gradient(round_operand(y, self.outputs), self.grads)


class PolicyLinear(nn.Linear):
    """nn.Linear whose operands follow `self.numerics` (set by apply_policy)."""

    numerics: LayerNumerics

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.numerics
        x_q = round_operand(x, n.activations)  # [..., in]
        w_q = round_operand(self.weight, n.weights)  # [out, in]
        return n.result(nn.functional.linear(x_q, w_q, self.bias))  # [..., out], FP32 bias


class PolicyConv2d(nn.Conv2d):
    """nn.Conv2d whose operands follow `self.numerics` (set by apply_policy)."""

    numerics: LayerNumerics

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        n = self.numerics
        x_q = round_operand(input, n.activations)  # [N, C, H, W]
        w_q = round_operand(weight, n.weights)  # [O, C/groups, kh, kw]
        return n.result(super()._conv_forward(x_q, w_q, bias))  # [N, O, H', W']


_POLICY_CLASS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: PolicyLinear,
    nn.Conv2d: PolicyConv2d,
    PolicyLinear: PolicyLinear,
    PolicyConv2d: PolicyConv2d,
}
_PLAIN_CLASS: dict[type[nn.Module], type[nn.Module]] = {
    PolicyLinear: nn.Linear,
    PolicyConv2d: nn.Conv2d,
}


def apply_policy(model: nn.Module, policy: str | PrecisionPolicy, seed: int = 0) -> nn.Module:
    """Put every nn.Linear/nn.Conv2d of `model` (itself included) under `policy`, in place.

    Returns `model`. Layers are numbered in `model.modules()` order; layer i's stochastic
    rounding is seeded from `seed` and i, so a seeded run is reproducible. Applying again
    replaces the earlier policy and resets its amax histories.
    """
    p = get_policy(policy)
    layers = [m for m in model.modules() if type(m) in _POLICY_CLASS]
    for index, layer in enumerate(layers):
        layer.__class__ = _POLICY_CLASS[type(layer)]
        setattr(layer, "numerics", LayerNumerics(p, seed * 100_003 + index))  # noqa: B010
    return model


def remove_policy(model: nn.Module) -> nn.Module:
    """Undo `apply_policy` in place: policy layers become plain nn.Linear/nn.Conv2d again."""
    for layer in model.modules():
        plain = _PLAIN_CLASS.get(type(layer))
        if plain is not None:
            layer.__class__ = plain
            del layer.numerics
    return model


_SLOTS = ("activations", "weights", "grads", "outputs")


def policy_state(model: nn.Module) -> dict[str, Any]:
    """The precision state of every policy layer of `model` (for checkpoints), by layer path."""
    out: dict[str, Any] = {}
    for path, module in model.named_modules():
        numerics = getattr(module, "numerics", None)
        for slot in _SLOTS if numerics is not None else ():
            q = getattr(numerics, slot)
            if q is not None:
                out[f"{path}.{slot}"] = q.state_dict()
    return out


def load_policy_state(model: nn.Module, state: dict[str, Any]) -> None:
    """Restore what `policy_state` saved into the policy layers of `model`."""
    for path, module in model.named_modules():
        numerics = getattr(module, "numerics", None)
        for slot in _SLOTS if numerics is not None else ():
            q, saved = getattr(numerics, slot), state.get(f"{path}.{slot}")
            if q is not None and saved is not None:
                q.load_state_dict(saved)
