"""The GPU op cost model: the GEMM epilogue (output store after the K loop) in closed form, and
fitting a calibration to measured GEMM times (a round trip through known parameters)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dojo.sim.costs import DeviceModel, load_calibration
from dojo.sim.fit import GemmSample, fit_gemm, mean_log_error

BW = 2.0e12


def _a100(overlap: float, e_max: float = 0.8, half: float = 2e9) -> DeviceModel:
    """An A100 at 312 TFLOP/s and 2 TB/s with these GEMM calibration fields."""
    cal = replace(load_calibration("a100"), epilogue_overlap=overlap, matrix_efficiency=e_max,
                  matrix_half_flops=half)
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


SHAPES = [(1, m, n, k) for m in (2048, 16384) for n, k in
          ((6144, 2048), (2048, 2048), (8192, 2048), (2048, 8192), (1536, 512), (768, 12288))]
SHAPES += [(96, 2048, 2048, 64), (16, 1024, 1024, 128)]


@pytest.mark.parametrize("truth", [(0.72, 10**9.5, 0.3), (0.85, 10**8.0, 0.0)])
def test_fit_recovers_the_parameters_that_made_the_times(truth: tuple[float, ...]) -> None:
    dev = _a100(truth[2], truth[0], truth[1])
    samples = [GemmSample(b, m, n, k, 1.0) for b, m, n, k in SHAPES]
    samples = [replace(s, seconds=s.predicted(dev)) for s in samples]
    cal, err = fit_gemm(samples, _a100(1.0, 0.5, 1e10))
    assert err < 2e-3
    assert cal.matrix_efficiency == pytest.approx(truth[0], abs=0.011)
    assert cal.epilogue_overlap == pytest.approx(truth[2], abs=0.11)


def test_a_wrong_calibration_shows_its_error() -> None:
    """Times 20 % slower than the model: the error of the unfitted model is ln(1.2)."""
    dev = _a100(0.0, 0.8, 2e9)
    samples = [GemmSample(b, m, n, k, 1.2 * GemmSample(b, m, n, k, 1.0).predicted(dev))
               for b, m, n, k in SHAPES]
    assert mean_log_error(samples, dev) == pytest.approx(0.18232, abs=1e-4)


@pytest.mark.slow
def test_gpu_calibration_script_runs_on_the_cpu() -> None:
    """bench/calibrate_gpu.py's whole path (measure, fit, step check) on this CPU."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "bench" / "calibrate_gpu.py"
    run = subprocess.run([sys.executable, str(script), "--device", "cpu"], capture_output=True,
                         text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "mean |log error|" in run.stdout and "| GPT step |" in run.stdout
