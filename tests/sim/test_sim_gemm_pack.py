"""A CPU GEMM's work beyond its multiplications: packing its largest matrix once per call
(`matrix_pack_byte_s`, `DeviceModel.pack_time`) and, in a pass beyond the caches, reading its
operands from memory at the measured packing rate (`matrix_memory_call_s`,
`matrix_memory_byte_s`, `DeviceModel.memory_operand_time`)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from bench_module import load_bench

from dojo.compiler.work import OpCost
from dojo.hardware import load_system
from dojo.sim.costs import DeviceModel


def _device(**fields: float) -> DeviceModel:
    from dojo.sim.simulate import device_for

    dev = device_for(load_system("cpu"), "fp32")
    base = {"matrix_pack_byte_s": 0.0, "matrix_memory_call_s": 0.0, "matrix_memory_byte_s": 0.0}
    return replace(dev, calibration=replace(dev.calibration, **{**base, **fields}))


def _gemm(m: int, k: int, n: int, b: int = 1, target: str = "aten.mm.default") -> OpCost:
    elements = b * (m * k + k * n + m * n)
    return OpCost("matrix", 2.0 * b * m * k * n, 4.0 * elements, target, (b, m, n),
                  4.0 * b * m * n)


@pytest.mark.parametrize("m,k,n,b,largest", [
    (64, 512, 1536, 1, 512 * 1536),     # a forward linear over 64 tokens: the weight
    (1536, 64, 512, 1, 1536 * 512),     # a weight gradient over 64 tokens: the output
    (4096, 4096, 64, 1, 4096 * 4096),   # a wide input: the input
    (17, 64, 17, 8, 8 * 17 * 64),       # a batched score GEMM: per batch, times the batch
])
def test_a_gemm_packs_its_largest_matrix_once_per_call(m: int, k: int, n: int, b: int,
                                                       largest: int) -> None:
    """The packing adds per_byte x 4 bytes x the largest of b (m k), b (k n), b (m n): closed
    form, whatever the matrix; a device without the figure adds nothing."""
    op = _gemm(m, k, n, b)
    plain, packed = _device(), _device(matrix_pack_byte_s=2e-11)
    assert packed.op_time(op) - plain.op_time(op) == pytest.approx(2e-11 * 4 * largest, rel=1e-9)


def test_convolutions_and_fused_attention_pack_nothing() -> None:
    """The figure is a BLAS call's: a convolution (oneDNN's own reorders, `library_call_s`) and
    CPU flash attention (tiles of its own) are priced without it."""
    plain, packed = _device(), _device(matrix_pack_byte_s=2e-11)
    conv = _gemm(64, 576, 3136, target="aten.convolution.default")
    attention = _gemm(64, 64, 64, 4, target="aten._scaled_dot_product_flash_attention_for_cpu")
    for op in (conv, attention):
        assert packed.op_time(op) == pytest.approx(plain.op_time(op), rel=1e-12)


def test_packing_keeps_a_gemm_monotone_in_every_dimension() -> None:
    dev = _device(matrix_pack_byte_s=3e-11)
    base = dev.op_time(_gemm(64, 256, 256))
    for m, k, n in ((128, 256, 256), (64, 512, 256), (64, 256, 512)):
        assert dev.op_time(_gemm(m, k, n)) > base


def test_a_cold_gemm_reads_its_operands_at_the_measured_packing_rate() -> None:
    """On a cold device a GEMM's operands cost call + per_byte x bytes where the calibration
    has those figures, in place of the bytes at the memory bandwidth; a convolution keeps the
    bandwidth; hot, the figures change nothing."""
    op = _gemm(64, 512, 1536)
    conv = _gemm(64, 576, 3136, target="aten.convolution.default")
    figures = {"matrix_memory_call_s": 1.5e-5, "matrix_memory_byte_s": 4e-11}
    plain, measured = _device(), _device(**figures)
    cold_plain, cold_measured = replace(plain, cold=True), replace(measured, cold=True)
    swapped = 1.5e-5 + 4e-11 * op.bytes - op.bytes / plain.mem_bytes_per_s
    assert cold_measured.op_time(op) - cold_plain.op_time(op) == pytest.approx(swapped,
                                                                              rel=1e-9)
    assert cold_measured.op_time(conv) == pytest.approx(cold_plain.op_time(conv), rel=1e-12)
    assert measured.op_time(op) == pytest.approx(plain.op_time(op), rel=1e-12)


def test_the_square_curve_is_taken_net_of_packing() -> None:
    """calibrate_cpu.unpacked: square GEMMs timed as F / P + per_byte x 4 n^2 come back at
    rate P exactly, so the peak and F_half do not count the packing `pack_time` charges."""
    unpacked = load_bench("calibrate_cpu").unpacked
    peak, per_byte = 1e11, 3e-11
    curve = []
    for n in (32, 64, 128, 256, 512):
        flops = 2.0 * n**3
        curve.append((flops, flops / (flops / peak + per_byte * 4 * n * n)))
    assert [rate for _, rate in unpacked(curve, per_byte)] == pytest.approx([peak] * 5,
                                                                           rel=1e-9)


def test_the_cold_gemm_fit_recovers_a_line() -> None:
    """gemm_pack.fit_line (the cold fit's and the lockstep fit's line): points on call +
    per_byte x bytes give both back."""
    fit = load_bench("gemm_pack").fit_line
    xs = [3.3e5, 1.05e6, 3.7e6, 3.3e5, 1.05e6, 3.7e6]
    assert fit(xs, [1.2e-5 + 4.5e-11 * x for x in xs]) == pytest.approx((1.2e-5, 4.5e-11))
