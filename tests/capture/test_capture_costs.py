"""Cost rules of single ATen ops (docs/ir.md, `dojo.capture.costs`) against eager PyTorch:
the weights of the ops that are not one operation."""

from __future__ import annotations

import pytest
import torch

from dojo.capture.costs import flops_of

aten = torch.ops.aten


def test_safe_softmax_counts_as_softmax() -> None:
    """SDPA's math fallback emits `_safe_softmax`: the softmax rule, 4 FLOP per element
    (max, subtract, exp, sum and divide counted as for `_softmax`), not `unknown`."""
    x = torch.randn(2, 5, 7)
    for op in (aten._safe_softmax.default, aten._softmax.default):
        out = op(x, -1) if op is aten._safe_softmax.default else op(x, -1, False)
        assert flops_of(op, (x, -1), {}, out, [x], [out]) == (4 * x.numel(), "norm_softmax")


@pytest.mark.parametrize("name,low,high", [("gelu", 6, 12), ("gelu_backward", 9, 16),
                                           ("silu", 5, 6), ("exp", 5, 6)])
def test_transcendental_weights_lie_in_the_measured_range(name: str, low: int,
                                                          high: int) -> None:
    """Pointwise kernels built on erf/exp cost several counted FLOP per element: their weight
    lies in the range bench/calibrate_cpu.py `pointwise_weights` measured on one core against
    the norms and softmax (not 1, which read GELU-heavy CPU steps ~7x low per FLOP)."""
    op = getattr(aten, name).default
    x, g = torch.randn(64), torch.randn(64)
    args = (g, x) if name.endswith("_backward") else (x,)
    out = op(*args)
    flops, rule = flops_of(op, args, {}, out, list(args), [out])
    assert rule == "pointwise" and low <= flops / x.numel() <= high


@pytest.mark.parametrize("name,low,high", [("gelu", 16, 18), ("gelu_backward", 18, 19)])
def test_gelu_tanh_is_its_own_kernel(name: str, low: int, high: int) -> None:
    """GPT-2's GELU, `approximate="tanh"`, runs another kernel than the exact one: its weight
    lies in what `pointwise_weights` measured for it (Intel Xeon, AVX-512: 17.6-17.7 forward,
    18.9-19.0 backward), over twice the exact kernel's, which it was charged before."""
    op = getattr(aten, name).default
    x, g = torch.randn(64), torch.randn(64)
    args = (g, x) if name.endswith("_backward") else (x,)
    kwargs = {"approximate": "tanh"}
    out = op(*args, **kwargs)
    flops, rule = flops_of(op, args, kwargs, out, list(args), [out])
    exact, _ = flops_of(op, args, {}, op(*args), list(args), [out])
    assert rule == "pointwise" and low <= flops / x.numel() <= high
    assert flops >= 1.5 * exact
