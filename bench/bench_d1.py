"""The D1 node-level mapper: how long mapping takes, and what a D1 reaches on square matmuls.

Prints two markdown tables: the modelled time and TFLOPS of square BF16 matmuls on one D1 of the
V1 matrix (all 354 nodes, DIP HBM shared by all 150 chips), with the mapping chosen; and the
wall-clock time of one mapping search (cache cleared) per op shape.
Run: .venv/bin/python bench/bench_d1.py [--system v1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from dojo.compiler.d1 import chip_figures, map_matmul
from dojo.compiler.d1.matmul import _map
from dojo.hardware import load_system
from dojo.hardware.derived import summarize

SIZES = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
SHAPES = ((4096, 4096, 4096, 1), (8192, 3072, 768, 1), (768, 768, 100000, 1),
          (16384, 16384, 16384, 1), (2048, 2048, 64, 96))


def tflops_table(system: str) -> list[str]:
    spec = load_system(system)
    fig = chip_figures(spec)
    peak = fig.nodes * fig.matrix_rate("bf16")
    rows = ["| n (n x n x n, bf16) | time (us) | TFLOPS | % of peak | mode | nodes | bound |",
            "|---:|---:|---:|---:|---|---:|---|"]
    for n in SIZES:
        mp = map_matmul(n, n, n, "bf16", None, fig)
        rows.append(f"| {n} | {mp.time_s * 1e6:.1f} | {mp.flops_per_s / 1e12:.1f} | "
                    f"{100 * mp.flops_per_s / peak:.1f} | {mp.mode} | {mp.nodes} | {mp.bound} |")
    rows.append(f"\nPeak {peak / 1e12:.1f} TFLOPS per D1 ({summarize(spec).name}); "
                f"DIP stream share {fig.stream_bytes_per_s / 1e9:.1f} GB/s per chip.")
    return rows


def timing_table(system: str, repeats: int) -> list[str]:
    fig = chip_figures(load_system(system))
    rows = ["| m x n x k (batch) | mapping time (ms, median) |", "|---|---:|"]
    for m, n, k, b in SHAPES:
        samples = []
        for _ in range(repeats):
            _map.cache_clear()
            start = time.perf_counter()
            map_matmul(m, n, k, "bf16", None, fig, batch=b)
            samples.append(time.perf_counter() - start)
        rows.append(f"| {m} x {n} x {k} ({b}) | {1e3 * statistics.median(samples):.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", default="v1")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("\n".join(tflops_table(args.system)))
    print()
    print("\n".join(timing_table(args.system, args.repeats)))


if __name__ == "__main__":
    main()
