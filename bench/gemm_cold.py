"""What a CPU GEMM pays when its operands come from memory: the figures behind
`matrix_memory_call_s` and `matrix_memory_byte_s` (bench/calibrate_cpu.py, step 1b;
docs/benchmarks.md, twentieth round).

    .venv/bin/python bench/gemm_cold.py [--rounds 3]

A pass that outgrows the caches (`dojo.sim.eager.in_cache`) runs each GEMM on operands that
other ops evicted: a weight read in the forward is next read in the backward, a whole pass of
other bytes later. A BLAS copies its operands into packed panels before its K loop, so that
read does not overlap the multiplications, and it does not stream: a packing copy walks short
strided rows (a transposed weight in a forward `linear`), whose misses the prefetchers hide
less well than an elementwise add's (measured on a Zen 4 VM: 0.11 ns per byte of a 128 x 384
weight, 9 GB/s, against 34 GB/s streamed; nothing while the weights, cycled, fit the L3).

Measured, one intra-op thread: the six GEMMs of a two-layer transformer MLP (Linear w -> 3w ->
w, M = 64 tokens) forward (`addmm` of the transposed weight, as `linear` dispatches) and
backward (each layer's input gradient `mm(g, W)` and weight gradient `mm(g.t(), x)`), for
`WIDTHS`, with enough distinct layers that their weights are four times a 32 MiB L3. The
calls run in a pass's order, each once ("cold": its operands were evicted since its previous
run) and again right after ("hot": the state the GEMM curve of step 1 measures). Per call the
difference, the fastest of the rounds; per GEMM shape the mean over the layers; then the least-
squares line through (call's bytes: inputs and output, as `OpCost.bytes` counts them,
difference): its intercept is the cost per call, its slope the cost per byte.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch

from gemm_pack import fit_line

M = 64
WIDTHS = (128, 256, 512)
TOTAL_BYTES = 128 * 2**20  # the layers' weights: four times the largest L3 seen so far


def _calls(width: int, gen: torch.Generator) -> list[tuple[str, Callable[[], Any], int]]:
    """(shape key, call, bytes) of one pass over the layers of `width`, in a pass's order."""
    per_layer = 4 * 2 * 3 * width * width
    layers = max(4, TOTAL_BYTES // per_layer)
    wide = 3 * width
    shapes = [(wide, width), (width, wide)] * layers  # Linear weights [out, in]
    weights = [torch.randn(o, i, generator=gen) for o, i in shapes]
    biases = [torch.randn(o, generator=gen) for o, _ in shapes]
    acts = [torch.randn(M, i, generator=gen) for _, i in shapes]
    grads = [torch.randn(M, o, generator=gen) for o, _ in shapes]

    def nbytes(*shape_pairs: tuple[int, ...]) -> int:
        total = 0
        for shape in shape_pairs:
            n = 1
            for d in shape:
                n *= d
            total += 4 * n
        return total

    # Each call writes a buffer of its own, allocated here: a fresh output's page faults and
    # malloc's trimming would otherwise come and go between runs (a weight gradient's 3 MB).
    out: list[tuple[str, Callable[[], Any], int]] = []
    for w, b, x in zip(weights, biases, acts):
        o, i = w.shape
        y = torch.zeros(M, o)
        out.append((f"fwd {i}->{o}", lambda w=w, b=b, x=x, y=y: torch.addmm(b, x, w.t(), out=y),
                    nbytes((o,), (M, i), (i, o), (M, o))))
    for w, x, g in reversed(list(zip(weights, acts, grads))):
        o, i = w.shape
        dx, dw = torch.zeros(M, i), torch.zeros(o, i)
        out.append((f"dgrad {i}->{o}", lambda w=w, g=g, dx=dx: torch.mm(g, w, out=dx),
                    nbytes((M, o), (o, i), (M, i))))
        out.append((f"wgrad {i}->{o}", lambda x=x, g=g, dw=dw: torch.mm(g.t(), x, out=dw),
                    nbytes((o, M), (M, i), (o, i))))
    return out


def _penalties(calls: list[tuple[str, Callable[[], Any], int]], rounds: int
               ) -> dict[str, tuple[int, float]]:
    """Shape key -> (bytes, mean over its calls of the fastest cold-minus-hot seconds)."""
    first = [float("inf")] * len(calls)
    second = [float("inf")] * len(calls)
    clock = time.perf_counter
    for _ in range(rounds):
        for i, (_, call, _) in enumerate(calls):
            a = clock()
            call()
            b = clock()
            call()
            c = clock()
            first[i], second[i] = min(first[i], b - a), min(second[i], c - b)
    sums: dict[str, list[float]] = {}
    for (key, _, nbytes), f, s in zip(calls, first, second):
        row = sums.setdefault(key, [nbytes, 0.0, 0])
        row[1] += f - s
        row[2] += 1
    return {k: (int(v[0]), v[1] / v[2]) for k, v in sums.items()}


def memory_gemm_costs(rounds: int = 3) -> tuple[float, float, dict[str, tuple[int, float]]]:
    """(seconds per call, seconds per byte, the points: shape key -> (bytes, seconds)) a GEMM
    on operands from memory pays beyond the same GEMM on operands in the caches (module
    docstring); both figures clamped at 0."""
    gen = torch.Generator().manual_seed(0)
    points: dict[str, tuple[int, float]] = {}
    for width in WIDTHS:
        calls = _calls(width, gen)
        points.update({f"{k} (w {width})": v for k, v in _penalties(calls, rounds).items()})
        del calls
    fixed, per_byte = fit_line([float(b) for b, _ in points.values()],
                               [s for _, s in points.values()])
    return max(0.0, fixed), max(0.0, per_byte), points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    fixed, per_byte, points = memory_gemm_costs(args.rounds)
    print("| GEMM | bytes | cold - hot us | fit us |\n|---|---|---|---|")
    for key, (nbytes, s) in points.items():
        print(f"| {key} | {nbytes} | {s * 1e6:.1f} | {(fixed + per_byte * nbytes) * 1e6:.1f} |")
    print(f"per call {fixed * 1e6:.2f} us, per byte {per_byte * 1e9:.4f} ns "
          f"({1 / per_byte / 1e9 if per_byte else float('inf'):.1f} GB/s)")


if __name__ == "__main__":
    main()
