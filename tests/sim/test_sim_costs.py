"""The GPU op cost model: the GEMM epilogue (output store after the K loop) in closed form."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dojo.sim.costs import DeviceModel, load_calibration

BW = 2.0e12


def _a100(overlap: float) -> DeviceModel:
    cal = replace(load_calibration("a100"), epilogue_overlap=overlap)
    return DeviceModel(peak_flops=312e12, vector_flops=19.5e12, mem_bytes_per_s=BW,
                       calibration=cal, compute_units=108)


def test_unhidden_store_adds_output_bytes_over_bandwidth() -> None:
    """A compute-bound 8192^3 BF16 GEMM: an Ampere kernel stores its 128 MiB output after the
    K loop, so it takes exactly out / (bw * e_vec) longer than the plain roofline."""
    n = 8192
    flops, inputs, out = 2.0 * n**3, 2 * n * n * 2.0, n * n * 2.0
    roofline = _a100(1.0).matrix_time(flops, inputs + out, (1, n, n), out)
    stored = _a100(0.0).matrix_time(flops, inputs + out, (1, n, n), out)
    e_vec = load_calibration("a100").vector_efficiency
    assert stored - roofline == pytest.approx(out / (BW * e_vec), rel=1e-9)
    assert load_calibration("a100").epilogue_overlap == 0.0


def test_read_bound_op_is_unchanged() -> None:
    """When reading dominates (probabilities x V with a 64-wide head: it reads the S x S
    probabilities and writes S x 64), reads and store run at bandwidth either way."""
    b, s, d = 64, 2048, 64
    flops, inputs, out = 2.0 * b * s * s * d, (b * s * s + b * s * d) * 2.0, b * s * d * 2.0
    cal = load_calibration("a100")
    for overlap in (0.0, 1.0):
        t = _a100(overlap).matrix_time(flops, inputs + out, (b, s, d), out)
        assert t == pytest.approx((inputs + out) / (BW * cal.vector_efficiency) + cal.launch_s,
                                  rel=1e-9)


def test_captured_gemm_reports_its_output_bytes() -> None:
    """The QKV projection of a GPT block writes tokens x 3h / tp elements of 2 bytes (BF16)."""
    from dojo.compiler.work import model_work
    from dojo.sim.session import captured

    h, seq, mb, tp = 64, 32, 2, 2
    graph, _ = captured("gpt", {"layers": 4, "hidden": h, "heads": 4, "seq": seq,
                                "vocab": 128, "ffn": 4 * h}, mb, None)
    work = model_work(graph, tp=tp, scale=0.5)
    assert work.block is not None
    outs = {op.out_bytes for op in work.block.forward if op.kind == "matrix"}
    assert mb * seq * 3 * h // tp * 2.0 in outs
    assert all(op.out_bytes == 0.0 for op in work.block.forward if op.kind == "vector")
