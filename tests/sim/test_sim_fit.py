"""Fitting a GPU calibration to measured GEMM times: a round trip through known parameters."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dojo.sim.costs import DeviceModel, load_calibration
from dojo.sim.fit import GemmSample, fit_gemm, mean_log_error


def _device(e_max: float, half: float, overlap: float) -> DeviceModel:
    cal = replace(load_calibration("a100"), matrix_efficiency=e_max, matrix_half_flops=half,
                  epilogue_overlap=overlap)
    return DeviceModel(peak_flops=312e12, vector_flops=19.5e12, mem_bytes_per_s=2.0e12,
                       calibration=cal, compute_units=108)


SHAPES = [(1, m, n, k) for m in (2048, 16384) for n, k in
          ((6144, 2048), (2048, 2048), (8192, 2048), (2048, 8192), (1536, 512), (768, 12288))]
SHAPES += [(96, 2048, 2048, 64), (16, 1024, 1024, 128)]


@pytest.mark.parametrize("truth", [(0.72, 10**9.5, 0.3), (0.85, 10**8.0, 0.0)])
def test_fit_recovers_the_parameters_that_made_the_times(truth: tuple[float, ...]) -> None:
    dev = _device(*truth)
    samples = [GemmSample(b, m, n, k, 1.0) for b, m, n, k in SHAPES]
    samples = [replace(s, seconds=s.predicted(dev)) for s in samples]
    cal, err = fit_gemm(samples, _device(0.5, 1e10, 1.0))
    assert err < 2e-3
    assert cal.matrix_efficiency == pytest.approx(truth[0], abs=0.011)
    assert cal.epilogue_overlap == pytest.approx(truth[2], abs=0.11)


def test_a_wrong_calibration_shows_its_error() -> None:
    """Times 20 % slower than the model: the error of the unfitted model is ln(1.2)."""
    dev = _device(0.8, 2e9, 0.0)
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
