"""What a CPU convolution costs eager PyTorch beyond its FLOPs (bench/calibrate_cpu.py's
convolution figures, one intra-op thread, FP32): its rate against the GEMM peak, oneDNN's setup
per call, the fixed work of a call, and the im2col path's unfolding per element of its columns
matrix (`dojo.compiler.eager_cpu`). Every time is the minimum over repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _best(fn: Callable[[], object], repeat: int = 7) -> float:
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return min(samples)


def conv_ratio(peak: float) -> float:
    """FP32 3x3 convolution throughput (forward) as a fraction of the GEMM peak."""
    rates = []
    for c, hw in ((64, 32), (128, 16), (256, 8)):
        x = torch.randn(8, c, hw, hw)
        w = torch.randn(c, c, 3, 3)
        t = _best(lambda x=x, w=w: torch.nn.functional.conv2d(x, w, padding=1))
        rates.append(2.0 * 8 * c * c * 9 * hw * hw / t)
    return min(1.0, statistics.median(rates) / peak)


def onednn_setup(repeat: int = 200) -> tuple[float, float]:
    """(forward s, backward s) of oneDNN's setup per convolution call: a tiny 3x3 convolution
    of 2 images (PyTorch hands it to oneDNN) against the same convolution of 1 image (the im2col
    path, `dojo.compiler.eager_cpu`), timed side by side; both kernels take about a
    microsecond, so the difference is the library's primitive setup and operand reorders."""
    w = torch.randn(8, 8, 3, 3, requires_grad=True)
    best: dict[int, tuple[float, float]] = {}
    for _ in range(3):
        for batch in (1, 2):
            x = torch.randn(batch, 8, 4, 4, requires_grad=True)
            y = torch.nn.functional.conv2d(x, w, padding=1)
            g = torch.randn_like(y)
            fwd = _best(lambda x=x: torch.nn.functional.conv2d(x, w, padding=1), repeat)
            both = _best(lambda x=x, g=g: torch.autograd.grad(
                torch.nn.functional.conv2d(x, w, padding=1), (x, w), g), repeat)
            old = best.get(batch, (fwd, both - fwd))
            best[batch] = (min(old[0], fwd), min(old[1], both - fwd))
    return (max(0.0, best[2][0] - best[1][0]), max(0.0, best[2][1] - best[1][1]))


def eltwise_setup(repeat: int = 400) -> tuple[float, float]:
    """(forward s, backward s) of oneDNN's eltwise setup per exact GELU call: `aten.gelu` and
    `aten.gelu_backward` on 256 FP32 elements with oneDNN on against off
    (`torch.backends.mkldnn.enabled`: PyTorch's own kernel instead), timed side by side; either
    kernel's work on 256 elements is well under a microsecond, so the difference is the
    primitive's setup (`dojo.compiler.eager_cpu.eltwise_calls`)."""
    aten = torch.ops.aten
    x, g = torch.randn(256), torch.randn(256)
    best: dict[bool, tuple[float, float]] = {}
    was = torch.backends.mkldnn.enabled
    try:
        for _ in range(3):
            for on in (True, False):
                torch.backends.mkldnn.enabled = on
                fwd = _best(lambda: aten.gelu.default(x), repeat)
                bwd = _best(lambda: aten.gelu_backward.default(g, x), repeat)
                old = best.get(on, (fwd, bwd))
                best[on] = (min(old[0], fwd), min(old[1], bwd))
    finally:
        torch.backends.mkldnn.enabled = was
    return (max(0.0, best[True][0] - best[False][0]), max(0.0, best[True][1] - best[False][1]))


def conv_call_overhead(repeat: int = 200) -> tuple[float, float]:
    """(forward s, backward s) a CPU convolution costs beyond one op's dispatch and its FLOPs:
    a tiny one-image 3x3 convolution (the im2col path: `_slow_conv2d_forward` and
    `_slow_conv2d_backward`, which allocate, zero and unfold a columns buffer and run three
    small GEMMs per call) against a tiny matmul, each one counted op per phase (the matmul's
    backward asked for one gradient: one mm), timed side by side; all kernels take about a
    microsecond, so the difference is the convolution's own fixed work per call."""
    w = torch.randn(2, 2, 3, 3, requires_grad=True)
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    a, b = torch.randn(4, 4), torch.randn(4, 4, requires_grad=True)
    gy = torch.randn(1, 2, 4, 4)
    gm = torch.randn(4, 4)

    def conv() -> torch.Tensor:
        return torch.nn.functional.conv2d(x, w, padding=1)

    best = [float("inf")] * 4
    for _ in range(3):
        times = [_best(conv, repeat),
                 _best(lambda: torch.autograd.grad(conv(), (x, w), gy), repeat),
                 _best(lambda: torch.mm(a, b), repeat),
                 _best(lambda: torch.autograd.grad(torch.mm(a, b), (b,), gm), repeat)]
        best = [min(o, t) for o, t in zip(best, times)]
    fwd_conv, both_conv, fwd_mm, both_mm = best
    return (max(0.0, fwd_conv - fwd_mm),
            max(0.0, (both_conv - fwd_conv) - (both_mm - fwd_mm)))


# One-image 3x3 convolutions on the im2col path (input at most 20,480 elements): 8 and 48 input
# channels on 16 x 16, 8 output channels; columns matrices of 18,432 and 110,592 elements.
IM2COL_CHANNELS = (8, 48)
IM2COL_SIDE = 16
IM2COL_OUT = 8


def im2col_costs(peak: float, half_flops: float, conv_efficiency: float, rounds: int = 3,
                 repeat: int = 100) -> tuple[float, float]:
    """(forward s, backward s) per element of the columns matrix an im2col-path convolution
    unfolds: two one-image 3x3 convolutions whose columns differ 6x, forward and backward
    timed side by side; the difference of each phase's time net of its GEMMs as the simulator
    times them (forward one of F FLOP, backward two: (F / conv_efficiency + half_flops) /
    peak each), over the difference of their columns' elements."""
    best: dict[int, list[float]] = {}
    for _ in range(rounds):
        for c in IM2COL_CHANNELS:
            x = torch.randn(1, c, IM2COL_SIDE, IM2COL_SIDE, requires_grad=True)
            w = torch.randn(IM2COL_OUT, c, 3, 3, requires_grad=True)
            g = torch.randn(1, IM2COL_OUT, IM2COL_SIDE, IM2COL_SIDE)

            def conv(x: torch.Tensor = x, w: torch.Tensor = w) -> torch.Tensor:
                return torch.nn.functional.conv2d(x, w, padding=1)

            fwd = _best(conv, repeat)
            both = _best(lambda conv=conv, x=x, w=w, g=g: torch.autograd.grad(conv(), (x, w), g),
                         repeat)
            old = best.get(c, [fwd, both - fwd])
            best[c] = [min(old[0], fwd), min(old[1], both - fwd)]

    def gemm(c: int) -> float:
        flops = 2.0 * IM2COL_OUT * c * 9 * IM2COL_SIDE ** 2
        return (flops / conv_efficiency + half_flops) / peak

    def columns(c: int) -> int:
        return c * 9 * IM2COL_SIDE ** 2

    small, large = IM2COL_CHANNELS
    span = columns(large) - columns(small)
    out = []
    for phase, gemms in ((0, 1), (1, 2)):
        net = [best[c][phase] - gemms * gemm(c) for c in (small, large)]
        out.append(max(0.0, (net[1] - net[0]) / span))
    return out[0], out[1]
