"""A CPU convolution's own fixed work per call (the CPU closed loop, fourth round): what eager
PyTorch does inside one convolution call beyond an op's dispatch, checked against PyTorch's
own profiler, and how the `cpu` device charges it (closed form)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
from bench_module import load_bench

from dojo.compiler.work import OpCost
from dojo.sim.costs import DeviceModel, load_calibration


def _device(**fields: Any) -> DeviceModel:
    cal = replace(load_calibration("cpu"), **fields)
    return DeviceModel(peak_flops=1e11, vector_flops=1e11, mem_bytes_per_s=1e10, calibration=cal)


def test_every_convolution_pays_its_call_on_an_eager_device() -> None:
    """A convolution (im2col or oneDNN) costs `conv_call_s` forward and
    `conv_call_backward_s` backward on top of its dispatch, kernel and any oneDNN setup; a
    matmul of the same FLOPs and a device with a compiler do not."""
    dev = _device(conv_call_s=5e-6, conv_call_backward_s=3e-5, library_call_s=2e-5,
                  library_call_backward_s=7e-5, eager=True)
    bare = _device(conv_call_s=0.0, conv_call_backward_s=0.0, library_call_s=2e-5,
                   library_call_backward_s=7e-5, eager=True)
    im2col = OpCost("matrix", 1e6, 1e4, "aten.convolution.default")
    onednn = replace(im2col, library_calls=1)
    back = replace(im2col, target="aten.convolution_backward.default")
    mm = OpCost("matrix", 1e6, 1e4, "aten.mm.default")
    assert dev.op_time(im2col) - bare.op_time(im2col) == pytest.approx(5e-6, rel=1e-9)
    assert dev.op_time(onednn) - bare.op_time(onednn) == pytest.approx(5e-6, rel=1e-9)
    assert dev.op_time(onednn) - dev.op_time(im2col) == pytest.approx(2e-5, rel=1e-9)
    assert (dev.for_phase("backward").op_time(back) - bare.for_phase("backward").op_time(back)
            == pytest.approx(3e-5, rel=1e-9))
    assert dev.op_time(mm) == bare.op_time(mm)
    compiled = _device(conv_call_s=5e-6, eager=False)
    assert compiled.op_time(im2col) == replace(
        compiled, calibration=replace(compiled.calibration, conv_call_s=0.0)).op_time(im2col)


BUFFER_OPS = ("aten::empty", "aten::empty_strided", "aten::zero_", "aten::fill_",
              "aten::resize_", "aten::resize_as_", "aten::zeros")


def _buffer_calls(fn: Any) -> int:
    """ATen calls that allocate, resize or fill a buffer, as PyTorch's profiler records them
    while `fn` runs (one `autograd.grad` call)."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return sum(1 for e in prof.events() if e.name in BUFFER_OPS)


def test_an_im2col_convolution_backward_is_many_calls_where_a_matmul_is_one() -> None:
    """Why a convolution call costs more than an op's dispatch, from PyTorch's profiler (an
    independent reference): the backward of a tiny one-image convolution (im2col path) runs
    `_slow_conv2d_backward`, which allocates, resizes and zeroes its buffers (8 such ATen calls
    in torch 2.13; 5 asserted), where a matmul's backward for one operand is one mm into a
    fresh output (the views around it aside) and no such call."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        w = torch.randn(2, 2, 3, 3, requires_grad=True)
        x = torch.randn(1, 2, 4, 4, requires_grad=True)
        y = torch.nn.functional.conv2d(x, w, padding=1)
        a, b = torch.randn(4, 4), torch.randn(4, 4, requires_grad=True)
        z = torch.mm(a, b)
        gy, gz = torch.ones_like(y), torch.ones_like(z)
        conv = _buffer_calls(lambda: torch.autograd.grad(y, (x, w), gy))
        mm = _buffer_calls(lambda: torch.autograd.grad(z, (b,), gz))
    finally:
        torch.set_num_threads(threads)
    assert conv >= 5 and mm == 0, (conv, mm)


@pytest.mark.slow
def test_calibration_measures_a_positive_convolution_call() -> None:
    """calibrate_cpu.conv_call_overhead on this machine: a tiny convolution's backward costs
    more than a tiny matmul's (the nested calls above), its forward at least as much."""
    module = load_bench("calibrate_cpu")
    forward, backward = module.conv_call_overhead(repeat=50)
    assert backward > 1e-6 and forward >= 0.0


def _pytorch_picks_onednn(conv: torch.nn.Conv2d, x: torch.Tensor) -> bool:
    """PyTorch's own backend choice for `conv` on `x` at one intra-op thread: oneDNN?"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        backend = torch._C._select_conv_backend(x, conv.weight, None, conv.stride, conv.padding,
                                                conv.dilation, False, (0, 0), 1, None)
    finally:
        torch.set_num_threads(threads)
    return str(backend).endswith("Mkldnn")


@pytest.mark.parametrize("batch,channels,kernel,stride,size", [
    (1, 8, 3, 1, 4), (2, 8, 3, 1, 4), (1, 3, 7, 2, 64), (1, 64, 3, 1, 32), (1, 8, 1, 1, 8),
    (3, 16, 1, 1, 4), (16, 4, 1, 1, 4), (1, 8, 3, 2, 16), (6, 3, 3, 2, 32)])
def test_onednn_convolutions_are_the_ones_pytorch_hands_to_onednn(
        batch: int, channels: int, kernel: int, stride: int, size: int) -> None:
    """`onednn_calls` counts a captured convolution (forward and backward) as oneDNN's exactly
    when PyTorch's own backend choice for that call on one thread is oneDNN."""
    from dojo.capture import capture
    from dojo.compiler.eager_cpu import onednn_calls

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(channels, 4, kernel, stride=stride, padding=kernel // 2, bias=False)
    x = torch.randn(batch, channels, size, size)
    expected = _pytorch_picks_onednn(conv, x)
    opt = torch.optim.SGD(conv.parameters(), lr=0.0)
    graph = capture(conv, (x,), lambda y: y.square().mean(), opt, name="conv",
                    repeat_blocks=False).graph
    convs = [op for op in graph.ops if "convolution" in op.target]
    assert len(convs) == 2  # forward and backward
    assert [onednn_calls([op], graph) for op in convs] == [int(expected)] * 2


@pytest.mark.parametrize("batch,channels,kernel,stride,padding,size", [
    (1, 8, 3, 1, 1, 16), (1, 17, 3, 1, 1, 16), (1, 4, 5, 1, 2, 12), (1, 8, 1, 1, 0, 8),
    (1, 8, 1, 1, 1, 8), (2, 8, 3, 1, 1, 8), (1, 3, 7, 2, 3, 64), (1, 6, 3, 2, 1, 16)])
def test_unfolded_elements_are_the_columns_pytorch_unfolds(
        batch: int, channels: int, kernel: int, stride: int, padding: int, size: int) -> None:
    """`unfolded_elements` of a captured convolution (forward and backward) is the size of the
    columns matrix `torch.nn.functional.unfold` builds for it on the im2col path (PyTorch's own
    backend choice on one thread), 0 for oneDNN's and for a 1x1 kernel of stride 1 without
    padding (its input is the columns matrix)."""
    from dojo.capture import capture
    from dojo.compiler.eager_cpu import unfolded_elements

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(channels, 4, kernel, stride=stride, padding=padding, bias=False)
    x = torch.randn(batch, channels, size, size)
    columns = torch.nn.functional.unfold(x, kernel, padding=padding, stride=stride).numel()
    plain = kernel == 1 and stride == 1 and padding == 0
    expected = 0 if _pytorch_picks_onednn(conv, x) or plain else columns
    opt = torch.optim.SGD(conv.parameters(), lr=0.0)
    graph = capture(conv, (x,), lambda y: y.square().mean(), opt, name="conv",
                    repeat_blocks=False).graph
    convs = [op for op in graph.ops if "convolution" in op.target]
    assert len(convs) == 2
    assert [unfolded_elements([op], graph) for op in convs] == [expected] * 2
    if (batch, kernel, size) == (1, 3, 16):
        assert expected > 0  # the im2col path is what these cases exercise


def test_an_im2col_convolution_pays_its_columns_per_phase() -> None:
    """On an eager device an im2col convolution costs `im2col_element_s` per unfolded element
    forward and `im2col_element_backward_s` backward on top of the rest; a device with a
    compiler and an op that unfolds nothing do not."""
    dev = _device(im2col_element_s=4e-10, im2col_element_backward_s=1e-9, eager=True)
    bare = _device(im2col_element_s=0.0, im2col_element_backward_s=0.0, eager=True)
    fwd = OpCost("matrix", 1e6, 1e4, "aten.convolution.default", unfolded=50_000)
    back = replace(fwd, target="aten.convolution_backward.default")
    assert dev.op_time(fwd) - bare.op_time(fwd) == pytest.approx(50_000 * 4e-10, rel=1e-9)
    assert (dev.for_phase("backward").op_time(back) - bare.for_phase("backward").op_time(back)
            == pytest.approx(50_000 * 1e-9, rel=1e-9))
    none = replace(fwd, unfolded=0)
    assert dev.op_time(none) == bare.op_time(none)
    compiled = _device(im2col_element_s=4e-10, eager=False)
    assert compiled.op_time(fwd) == replace(
        compiled, calibration=replace(compiled.calibration, im2col_element_s=0.0)).op_time(fwd)


@pytest.mark.slow
def test_calibration_measures_the_columns_cost() -> None:
    """conv_costs.im2col_costs on this machine: unfolding costs time per element, and the
    backward (unfold and fold) more than the forward (unfold)."""
    module = load_bench("conv_costs")
    forward, backward = module.im2col_costs(1e11, 2e5, 1.0, rounds=3, repeat=50)
    assert 0.0 < forward < backward


def test_an_unsafe_view_is_issued_inside_matmul_and_costs_an_eager_device_nothing() -> None:
    """PyTorch's profiler puts `aten::_unsafe_view` under `aten::matmul` (a bias-free linear of
    a 3-D input: mm, then the reshape of its output), never at the top where Python issues
    ops; the capture records it as an op of its own, which an eager device charges nothing
    (no dispatch of its own, no kernel) and a compiled device still times."""
    from torch.profiler import ProfilerActivity, profile

    from dojo.capture import capture

    x, w = torch.randn(2, 8, 16), torch.randn(32, 16, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.nn.functional.linear(x, w)
    views = [e for e in prof.events() if e.name == "aten::_unsafe_view"]
    assert views and all(e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::")
                         for e in views)
    lin = torch.nn.Linear(16, 32, bias=False)
    opt = torch.optim.SGD(lin.parameters(), lr=0.0)
    graph = capture(lin, (x,), lambda y: y.square().mean(), opt, name="lin",
                    repeat_blocks=False).graph
    op = next(o for o in graph.ops if o.target == "aten._unsafe_view.default")
    cost = OpCost("vector", float(op.flops), float(op.bytes_read + op.bytes_written), op.target)
    eager = _device(eager=True)
    assert eager.op_time(cost) == 0.0
    assert _device(eager=False).op_time(cost) > 0.0
    group = OpCost("vector", 0.0, 1e4, "fused[5]")  # in a fused group: one dispatch fewer
    assert (eager.op_time(group) - eager.op_time(replace(group, inner_views=1))
            == pytest.approx(eager.calibration.launch_s, rel=1e-9))
