"""Fitting a GPU calibration (dojo.sim.costs.Calibration) to measured GEMM times.

bench/calibrate_gpu.py measures GEMMs of transformer shapes on the device at hand; `fit_gemm`
finds the per-SM matrix efficiency `e_max` and the epilogue overlap (and, where the device model
knows no output tile so that `F_half` enters the time, the half-efficiency size `F_half`) that
make `DeviceModel.matrix_time` reproduce them, minimising the mean absolute log error (a ratio
error: a 10 % miss on a 1 ms GEMM weighs as much as one on a 1 s GEMM).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from dojo.sim.costs import Calibration, DeviceModel


@dataclass(frozen=True)
class GemmSample:
    """One measured (batched) GEMM: output `batch x m x n`, reduction `k`, seconds per call."""

    batch: int
    m: int
    n: int
    k: int
    seconds: float
    elem_bytes: float = 2.0  # BF16 operands and output

    def cost(self) -> tuple[float, float, float]:
        """(FLOP, bytes read + written, output bytes)."""
        b, m, n, k, e = self.batch, self.m, self.n, self.k, self.elem_bytes
        out = b * m * n * e
        return 2.0 * b * m * n * k, b * (m * k + k * n) * e + out, out

    def predicted(self, dev: DeviceModel) -> float:
        flops, nbytes, out = self.cost()
        return dev.matrix_time(flops, nbytes, (self.batch, self.m, self.n), out)


def mean_log_error(samples: Sequence[GemmSample], dev: DeviceModel) -> float:
    """Mean |ln(predicted / measured)| over the samples."""
    return sum(abs(math.log(s.predicted(dev) / s.seconds)) for s in samples) / len(samples)


def fit_gemm(samples: Sequence[GemmSample], dev: DeviceModel) -> tuple[Calibration, float]:
    """The calibration (dev's, with e_max, F_half and epilogue_overlap replaced) that fits the
    samples best on a grid (e_max in steps of 0.01, overlap in tenths, F_half in tenths of a
    decade from 1e5 to 4e11 FLOP), or dev's own if none is better, and its mean absolute log
    error. F_half is kept as it is when every sample is tiled on `dev` (a GPU model times
    those by waves of tiles, which F_half does not enter)."""
    if not samples:
        raise ValueError("fit_gemm: no samples")
    best = (mean_log_error(samples, dev), dev.calibration)
    tiled = all(dev.tiling((s.batch, s.m, s.n)) is not None for s in samples)
    halves = ([dev.calibration.matrix_half_flops] if tiled
              else [10 ** (e / 10) for e in range(50, 117)])
    for overlap_tenths in range(11):
        for half in halves:
            for e_pct in range(30, 101):
                cal = replace(dev.calibration, matrix_efficiency=e_pct / 100,
                              matrix_half_flops=half, epilogue_overlap=overlap_tenths / 10)
                err = mean_log_error(samples, replace(dev, calibration=cal))
                if err < best[0]:
                    best = (err, cal)
    return best[1], best[0]
