"""Throughput of dojo.numerics.quantize and the step-time overhead of precision policies.

Prints two markdown tables: quantize throughput (million elements per second) per format and
rounding mode on one float32 tensor, and the median training-step time (forward, backward, Adam)
of an MLP under the fp32, bf16 and cfp8 policies relative to plain eager fp32, measured in the
same process with interleaved repeats. Single-threaded by default (the machine is shared).
Run: .venv/bin/python bench/bench_numerics.py [--elements 4194304] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from dojo.numerics import apply_policy, quantize

FORMATS = ("cfp8_143", "cfp8_152", "cfp16", "bf16")


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def quantize_table(elements: int, repeats: int) -> list[str]:
    x = torch.randn(elements)  # [elements] float32
    g = torch.Generator().manual_seed(0)
    rows = ["| format | nearest (Melem/s) | stochastic (Melem/s) |", "|---|---:|---:|"]
    for name in FORMATS:

        def nearest(n: str = name) -> torch.Tensor:
            return quantize(x, n)

        def stochastic(n: str = name) -> torch.Tensor:
            return quantize(x, n, rounding="stochastic", generator=g)

        near, sto = _median_seconds(nearest, repeats), _median_seconds(stochastic, repeats)
        rows.append(f"| {name} | {elements / near / 1e6:.0f} | {elements / sto / 1e6:.0f} |")
    copy = _median_seconds(lambda: x.clone(), repeats)
    rows.append(f"| (x.clone() for scale) | {elements / copy / 1e6:.0f} | |")
    return rows


def _make_step(policy: str | None, width: int, batch: int) -> Callable[[], None]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                          nn.Linear(width, 10))
    if policy is not None:
        apply_policy(model, policy)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, width)  # [B, width]
    y = torch.randint(0, 10, (batch,))  # [B]

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def policy_table(width: int, batch: int, repeats: int) -> list[str]:
    names: list[str | None] = [None, "fp32", "bf16", "cfp8"]
    steps = {n: _make_step(n, width, batch) for n in names}
    samples: dict[str | None, list[float]] = {n: [] for n in names}
    for _ in range(3):  # interleave so drift on a shared machine hits every policy alike
        for n in names:
            samples[n].append(_median_seconds(steps[n], repeats))
    med = {n: min(s) for n, s in samples.items()}
    rows = [f"| policy (MLP {width}x{width}x3, batch {batch}) | step (ms) | vs eager fp32 |",
            "|---|---:|---:|"]
    for n in names:
        label = "eager fp32 (no policy)" if n is None else n
        rows.append(f"| {label} | {med[n] * 1e3:.2f} | {med[n] / med[None]:.2f}x |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=1 << 22)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)\n")
    print("\n".join(quantize_table(args.elements, args.repeats)))
    print()
    print("\n".join(policy_table(args.width, args.batch, args.repeats)))


if __name__ == "__main__":
    main()
