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
