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


@pytest.mark.parametrize("truth", [(0.72, 0.3), (0.85, 0.0)])
def test_fit_recovers_the_parameters_that_made_the_times(truth: tuple[float, ...]) -> None:
    """On a tiled GPU the time depends on e_max and the epilogue overlap (F_half does not enter
    it, so the fit leaves it as it was)."""
    dev = _a100(truth[1], truth[0])
    samples = [GemmSample(b, m, n, k, 1.0) for b, m, n, k in SHAPES]
    samples = [replace(s, seconds=s.predicted(dev)) for s in samples]
    cal, err = fit_gemm(samples, _a100(1.0, 0.5, 1e10))
    assert err < 2e-3
    assert cal.matrix_efficiency == pytest.approx(truth[0], abs=0.011)
    assert cal.epilogue_overlap == pytest.approx(truth[1], abs=0.11)
    assert cal.matrix_half_flops == 1e10


def test_fit_recovers_f_half_where_no_tile_is_known() -> None:
    """Without a tiling (compute_units 0: a CPU-like device) the GEMM time is (F + F_half) /
    (peak e_max) and the fit finds F_half too, to a tenth of a decade."""
    dev = replace(_a100(0.0, 0.8, 10**9.5), compute_units=0)
    samples = [GemmSample(1, m, n, k, 1.0) for m, n, k in ((64, 64, 64), (256, 128, 512),
                                                            (1024, 1024, 256), *[
                                                            s[1:] for s in SHAPES[:6]])]
    samples = [replace(s, seconds=s.predicted(dev)) for s in samples]
    cal, err = fit_gemm(samples, replace(_a100(1.0, 0.5, 1e7), compute_units=0))
    assert err < 5e-3
    assert cal.matrix_efficiency == pytest.approx(0.8, abs=0.011)
    assert cal.matrix_half_flops == pytest.approx(10**9.5, rel=0.26)


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


def _h100() -> DeviceModel:
    from dojo.hardware import load_system
    from dojo.sim.simulate import device_for

    return device_for(load_system("h100-cluster", devices=1), "bf16")


def test_a_gemm_of_one_tile_runs_at_one_sms_rate() -> None:
    """Issue 14: 64^3 on an H100 was charged ~1,085 us. One 64 x 64 output tile runs on one of
    the 132 SMs at its 1/132 of the peak (x e_max) after the launch: a few microseconds."""
    dev, n = _h100(), 64
    flops, nbytes, out = 2.0 * n**3, 3 * n * n * 2.0, n * n * 2.0
    t = dev.matrix_time(flops, nbytes, (1, n, n), out)
    cal = dev.calibration
    assert cal.launch_s <= t < 20e-6
    per_sm = flops / (989.4e12 / 132 * cal.matrix_efficiency)  # H100 SXM datasheet, dense BF16
    assert t == pytest.approx(cal.launch_s + per_sm + nbytes / (3.35e12 * cal.vector_efficiency),
                              rel=0.02)


def test_a_full_wave_of_whole_tiles_runs_at_the_device_rate() -> None:
    """132 tiles of 256 x 128 fill the H100's SMs exactly once: the tensor-core time is
    FLOP / (peak e_max), the rate large GEMMs were always charged."""
    dev = _h100()
    b, m, n, k = 1, 256 * 12, 128 * 11, 8192
    assert dev.matrix_compute_time(2.0 * b * m * n * k, (b, m, n)) == pytest.approx(
        2.0 * b * m * n * k / (dev.peak_flops * dev.calibration.matrix_efficiency), rel=1e-12)


def test_tiny_gpt_on_two_h100s_is_below_its_closed_form_bound() -> None:
    """Issue 14's reproduction (simulated at 95 ms per step): every op costs at most its launch,
    its bytes over HBM bandwidth and its FLOP at one SM's rate (plus F_half for a GEMM whose
    tiling is unknown); the gradient all-reduce at most the flat ring; the optimizer one pass
    over its captured bytes and the mixed-precision gradient passes. The step must be below
    the sum."""
    from dojo.compiler.work import OpCost
    from dojo.plan import parse_plan
    from dojo.sim.session import simulate_model
    from dojo.sim.simulate import device_model

    tiny = {"layers": 2, "hidden": 64, "heads": 4, "ffn": 256, "seq": 64, "vocab": 512}
    sim = simulate_model("gpt", tiny, "h100-cluster", parse_plan("dp=2"), 8, devices=2)
    prog = sim.program
    dev = device_model(prog)
    cal = dev.calibration
    bw, rate = dev.mem_bytes_per_s * cal.vector_efficiency, dev.peak_flops * cal.matrix_efficiency

    def op_bound(op: OpCost) -> float:
        compute = (132 * op.flops + cal.matrix_half_flops) / rate \
            if op.kind == "matrix" else op.flops / dev.vector_flops
        return cal.launch_s + op.bytes / bw + compute

    ops = [op for c in prog.chunks for op in (*c.forward, *c.backward, *c.recompute)]
    bound = prog.microbatches * sum(op_bound(op) for op in ops)
    grads, lv = prog.device_params(0) * 4.0, prog.grad_levels  # FP32 gradients under BF16
    members = 2
    alpha = max(x.latency_s for x in lv) + cal.collective_latency_s
    bound += 2 * (members - 1) * (alpha + grads / (members * min(x.bytes_per_s for x in lv)
                                                   * cal.link_efficiency))
    # the captured update, plus the gradient-norm read (4 B) and FP16's unscale (8 B)
    bound += cal.launch_s + prog.device_params(0) * (prog.work.optimizer_bytes_per_param + 12) / bw
    assert sim.result.step_time_s < bound
    assert bound < 5e-3  # the bound itself is physical: milliseconds, not the 95 ms of before
