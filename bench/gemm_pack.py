"""What a CPU GEMM costs per call beyond its FLOPs, by the size of its weight operand: the figure
behind `matrix_pack_byte_s` (bench/calibrate_cpu.py, step 1; docs/benchmarks.md, nineteenth and
twentieth rounds).

    .venv/bin/python bench/gemm_pack.py [--reps 15] [--cold]

For weights (K x N, FP32) from 256 KB (a core's L2) to 32 MB (the L3 of the machines seen so
far), time `torch.mm` of an M x K input by the weight for M = 8..256 tokens, one intra-op
thread, the fastest of `--reps` calls each, and fit t(M) = a + b M by least squares: b is the
GEMM's rate on its FLOPs (2 K N / b FLOP/s), a the cost paid once per call whatever M, which a
BLAS that copies the weight into packed panels pays in proportion to K N (printed per weight
element). The fit over M, within one run, keeps the machine's drifting peak out of a. `--cold`
streams 64 MB through the caches before each call (the weight then comes from memory).
`pack_cost` is the calibration's figure: a per byte of weight, the median over the weights up
to 8 MB (in the caches when hot; the 32 MB one is what `gemm_cold` measures).
"""

from __future__ import annotations

import argparse
import time

import torch

WEIGHTS = ((256, 256), (512, 1024), (1024, 2048), (2048, 4096))
HOT_WEIGHTS = WEIGHTS[:3]  # up to 8 MB: in a 32 MiB L3 when run over and over
TOKENS = (8, 16, 32, 64, 128, 256)


def fastest(m: int, k: int, n: int, reps: int, flush: torch.Tensor | None) -> float:
    """Seconds of the fastest of `reps` calls of an m x k by k x n `torch.mm`."""
    a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(reps):
        if flush is not None:
            flush.add_(1.0)
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return best


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line through (xs, ys)."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = (sum((x - mx) * (y - my) for x, y in zip(xs, ys))
             / sum((x - mx) ** 2 for x in xs))
    return my - slope * mx, slope


def pack_cost(reps: int = 9) -> float:
    """Seconds per weight byte a GEMM pays once per call (module docstring): the median over
    `HOT_WEIGHTS` of the fit's intercept per byte, clamped at 0."""
    per_byte = []
    for k, n in HOT_WEIGHTS:
        times = [fastest(m, k, n, reps, None) for m in TOKENS]
        a, _ = fit_line([float(m) for m in TOKENS], times)
        per_byte.append(a / (4 * k * n))
    return max(0.0, sorted(per_byte)[len(per_byte) // 2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--cold", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    flush = torch.empty(16 * 2**20) if args.cold else None
    print("| weight K x N | MB | per call us | ns per weight element | rate GFLOP/s |"
          " t(M=64) us | at that rate |\n|---|---|---|---|---|---|---|")
    for k, n in WEIGHTS:
        times = [fastest(m, k, n, args.reps, flush) for m in TOKENS]
        a, b = fit_line([float(m) for m in TOKENS], times)
        at64 = times[TOKENS.index(64)]
        print(f"| {k} x {n} | {4 * k * n / 2**20:.1f} | {a * 1e6:.1f} | "
              f"{a / (k * n) * 1e9:.3f} | {2 * k * n / b / 1e9:.1f} | {at64 * 1e6:.1f} | "
              f"{64 * b * 1e6:.1f} |", flush=True)


if __name__ == "__main__":
    main()
