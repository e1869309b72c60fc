"""Cost rules of single ATen ops (docs/ir.md, `dojo.capture.costs`) against eager PyTorch:
what aliases storage is a view, and the weights of the ops that are not one operation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dojo
from dojo.capture.costs import flops_of, is_view

aten = torch.ops.aten


def test_unsafe_view_is_a_view() -> None:
    """`_unsafe_view` shares its input's storage in eager PyTorch (no copy, no kernel), though its
    schema does not say so: the capture gives it the view rule, 0 FLOP and 0 bytes."""
    x = torch.randn(6, 4)
    y = aten._unsafe_view.default(x, [3, 8])
    assert y.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    op = aten._unsafe_view.default
    assert is_view(op)
    assert flops_of(op, (x, [3, 8]), {}, y, [x], [y]) == (0, "view")
    assert not is_view(aten.clone.default)  # a real copy stays one


class _BatchedWeight(nn.Module):
    """x @ w with a batched weight: matmul expands and clones w, then reshapes the copy and the
    bmm's result with `_unsafe_view`."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x, self.w)  # [3, 4, 2, 5]


def test_captured_unsafe_view_moves_nothing_and_aliases_its_input() -> None:
    """In the captured graph each `_unsafe_view` reads and writes 0 bytes and its output is a
    view of its input's storage (as in eager), while the clone before it is still a copy."""
    model = _BatchedWeight()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    graph = dojo.capture(model, (torch.randn(3, 4, 2, 8),), lambda y: y.square().mean(), opt,
                         repeat_blocks=False).graph
    views = [op for op in graph.ops if op.target == "aten._unsafe_view.default"]
    assert len(views) == 2
    for op in views:
        assert (op.rule, op.flops, op.bytes_read, op.bytes_written) == ("view", 0, 0, 0)
        assert graph.tensors[op.outputs[0]].view_of is not None
    clones = [op for op in graph.ops if op.target == "aten.clone.default"]
    assert clones and all(op.bytes_read > 0 for op in clones)


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
