"""A D1 times a matrix op as the GEMM it is: the output (batch, m, n) the compiler recorded and
k = FLOP / (2 batch m n), not a square matmul guessed from its FLOP and bytes (issue 14)."""

from __future__ import annotations

import functools

from dojo.compiler.d1.ops import MatmulShape, d1_op_time, equivalent_shape
from dojo.compiler.mapping import leaves_per_device
from dojo.compiler.work import OpCost
from dojo.hardware import load_system
from dojo.sim.costs import DeviceModel
from dojo.sim.simulate import device_for


@functools.cache
def _v1() -> DeviceModel:
    spec = load_system("v1")
    return device_for(spec, "bf16", leaves_per_device(spec))


def _bmm(b: int, m: int, n: int, k: int) -> OpCost:
    """A BF16 batched GEMM (b x m x k) @ (b x k x n) as the compiler records it."""
    flops = 2.0 * b * m * n * k
    nbytes = 2.0 * b * (m * k + k * n + m * n)
    return OpCost("matrix", flops, nbytes, "aten.bmm", (b, m, n), 2.0 * b * m * n)


def test_skinny_batched_gemm_is_timed_as_its_shape() -> None:
    """601 outer products (378 x 1) @ (1 x 938): the D1 mapper's time for exactly that shape
    (plus the launch), not the one square matmul of the same FLOP and bytes."""
    dev, spec = _v1(), load_system("v1")
    op = _bmm(601, 378, 938, 1)
    real = d1_op_time(MatmulShape(m=378, n=938, k=1, batch=601), spec, dtype="bf16").time_s
    assert dev.op_time(op) == real + dev.calibration.launch_s
    square = equivalent_shape(op.flops, op.bytes, "bf16")
    assert square.batch == 1 and square.m > 378 * 10  # what the old path timed instead
    guessed = d1_op_time(OpCost("matrix", op.flops, op.bytes, op.target), spec).time_s
    assert abs(guessed - real) > 0.05 * real


def test_shape_is_part_of_the_memo_key() -> None:
    """Two ops with the same FLOP, bytes and target but other shapes get their own times."""
    dev, spec = _v1(), load_system("v1")
    a = _bmm(8, 64, 2048, 64)        # FLOP 2^27 x 1
    b = OpCost(a.kind, a.flops, a.bytes, a.target, (8, 2048, 64), a.out_bytes)
    ta, tb = dev.op_time(a), dev.op_time(b)
    assert ta != tb
    launch = dev.calibration.launch_s
    assert ta - launch == d1_op_time(MatmulShape(64, 2048, 64, 8), spec).time_s
    assert tb - launch == d1_op_time(MatmulShape(2048, 64, 64, 8), spec).time_s


def test_unknown_shape_keeps_the_square_equivalent() -> None:
    """An op without a recorded shape (a fused attention kernel) is mapped as before."""
    dev, spec = _v1(), load_system("v1")
    op = OpCost("matrix", 2.0 * 512**3, 3 * 2.0 * 512**2, "attention")
    assert dev.op_time(op) == (d1_op_time(op, spec).time_s + dev.calibration.launch_s)


def test_a_convolution_is_timed_by_its_flop_and_bytes() -> None:
    """A convolution runs as an implicit GEMM (its k = C kh kw im2col operand is never written):
    its recorded output shape does not make it the explicit GEMM that would move 9x the bytes."""
    dev, spec = _v1(), load_system("v1")
    m, n, k = 65536, 32, 288  # 3x3 conv, 32 -> 32 channels, 65,536 output pixels
    nbytes = 2.0 * (m * 32 + k * n + m * n)
    op = OpCost("matrix", 2.0 * m * n * k, nbytes, "aten.convolution.default", (1, m, n))
    plain = OpCost(op.kind, op.flops, op.bytes, op.target)
    assert dev.op_time(op) == d1_op_time(plain, spec).time_s + dev.calibration.launch_s
