"""Policies as data, delayed scaling state, and the autograd building blocks vs eager PyTorch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dojo.errors import ConfigError, DojoError, UnknownNameError
from dojo.numerics import (
    POLICIES,
    AmaxHistory,
    OperandRule,
    PrecisionPolicy,
    TensorQuantizer,
    apply_policy,
    get_policy,
    policy_from_mapping,
    quantize,
)

FIXED = PrecisionPolicy(
    name="test_fixed",
    activations=OperandRule(fmt="cfp8_143"),
    weights=OperandRule(fmt="cfp8_143"),
    grads=OperandRule(fmt="cfp8_152"),
    outputs=OperandRule(fmt="bf16"),
)


def _top_143(bias: int) -> float:
    return (2 - 2**-3) * 2.0 ** (15 - bias)  # largest cfp8_143 value, from the spec


def _finest_143(amax: float) -> int:
    return max(b for b in range(64) if _top_143(b) >= amax)


def test_registered_policies_and_lookup() -> None:
    assert POLICIES.names() == ["fp32", "bf16", "cfp8"]
    cfp8 = get_policy("cfp8")
    assert cfp8.activations is not None and cfp8.activations.fmt == "cfp8_143"
    assert cfp8.grads is not None and (cfp8.grads.fmt, cfp8.grads.rounding) == (
        "cfp8_152", "stochastic")
    with pytest.raises(UnknownNameError, match="bf16"):
        get_policy("fp8")


def test_policy_from_mapping_validates_fields() -> None:
    p = policy_from_mapping({"name": "x", "grads": {"fmt": "cfp16", "scaling": "delayed"},
                             "amax_window": 4}, "run.toml")
    assert p.grads == OperandRule(fmt="cfp16", scaling="delayed") and p.amax_window == 4
    with pytest.raises(ConfigError, match=r"run.toml: field 'grads.fmt' = 'fp8'"):
        policy_from_mapping({"name": "x", "grads": {"fmt": "fp8"}}, "run.toml")
    with pytest.raises(ConfigError, match="amax_window"):
        policy_from_mapping({"name": "x", "amax_window": 0}, "run.toml")
    with pytest.raises(DojoError, match="fixed"):
        OperandRule(fmt="bf16", scaling="delayed")


def test_amax_history_window_and_non_finite() -> None:
    h = AmaxHistory(2)
    assert h.amax() is None
    for v in (3.0, 100.0, float("inf"), 0.5):
        h.record(v)
    assert h.amax() == 100.0 and len(h) == 2  # inf skipped; window keeps 100, 0.5
    h.record(0.25)
    assert h.amax() == 0.5


def test_delayed_scaling_uses_the_history_before_this_tensor() -> None:
    q = TensorQuantizer(OperandRule(fmt="cfp8_143", scaling="delayed"), window=2)
    out = q(torch.tensor([3.0, -1.0]))
    assert q.last_bias == _finest_143(3.0) == 14  # first call: its own amax
    out = q(torch.tensor([100.0, 1.0]))
    assert q.last_bias == 14 and out[0].item() == _top_143(14)  # history says 3: saturates
    q(torch.tensor([0.5]))
    assert q.last_bias == _finest_143(100.0)
    q(torch.tensor([0.5]))
    q(torch.tensor([0.5]))
    assert q.last_bias == _finest_143(0.5)  # 100 has left the window of 2


def test_linear_forward_and_backward_match_eager_with_rounded_operands() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(8, 5)
    ref = nn.Linear(8, 5)
    ref.load_state_dict(layer.state_dict())
    apply_policy(layer, FIXED)
    x = torch.randn(3, 4, 8, requires_grad=True)
    g_out = torch.randn(3, 4, 5)
    y = layer(x)
    y.backward(g_out)
    # Eager reference: round x and W, FP32 linear, round the result to bf16; in backward the
    # incoming gradient is rounded to cfp8_152 and flows straight through every rounding.
    xq = quantize(x.detach(), "cfp8_143").requires_grad_()
    wq = quantize(ref.weight.detach(), "cfp8_143").requires_grad_()
    bias = ref.bias.detach().clone().requires_grad_()
    y_ref = nn.functional.linear(xq, wq, bias)
    assert torch.equal(y, quantize(y_ref.detach(), "bf16"))
    y_ref.backward(quantize(g_out, "cfp8_152"))
    assert x.grad is not None and layer.weight.grad is not None and layer.bias.grad is not None
    torch.testing.assert_close(x.grad, xq.grad, rtol=1e-6, atol=0)
    torch.testing.assert_close(layer.weight.grad, wq.grad, rtol=1e-6, atol=0)
    torch.testing.assert_close(layer.bias.grad, bias.grad, rtol=1e-6, atol=0)
    assert not torch.equal(x.grad, x.grad.new_zeros(()).expand_as(x.grad))


def test_conv2d_forward_and_backward_match_eager_with_rounded_operands() -> None:
    torch.manual_seed(1)
    layer = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    assert layer.bias is not None
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    apply_policy(nn.Sequential(layer), FIXED)
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    g_out = torch.randn(2, 4, 5, 5)
    layer(x).backward(g_out)
    xq = quantize(x.detach(), "cfp8_143").requires_grad_()
    wq = quantize(w0, "cfp8_143").requires_grad_()
    y_ref = nn.functional.conv2d(xq, wq, b0, stride=2, padding=1)
    y_ref.backward(quantize(g_out, "cfp8_152"))
    torch.testing.assert_close(x.grad, xq.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(layer.weight.grad, wq.grad, rtol=1e-6, atol=1e-7)


def test_apply_policy_keeps_parameters_keys_and_master_weights() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2), nn.ReLU())
    params = list(model.parameters())
    keys = list(model.state_dict())
    apply_policy(model, "cfp8")
    assert list(model.parameters()) == params and list(model.state_dict()) == keys
    assert all(p.dtype == torch.float32 for p in params)  # FP32 master weights
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[2], nn.Linear)
    model(torch.randn(1, 1, 3, 3)).sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)


def test_quantizer_state_round_trip_continues_identically() -> None:
    """A restored quantizer rounds the next tensors exactly as the original would have."""
    from dojo.numerics import OperandRule, TensorQuantizer

    rule = OperandRule(fmt="cfp8_152", rounding="stochastic", scaling="delayed")
    a = TensorQuantizer(rule, window=4, seed=3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        a(torch.randn(64, generator=gen))
    b = TensorQuantizer(rule, window=4, seed=99)
    b.load_state_dict(a.state_dict())
    x = torch.randn(64, generator=gen)
    assert torch.equal(a(x), b(x)) and a.last_bias == b.last_bias
    assert len(b.history) == 4 and b.history.amax() == a.history.amax()
