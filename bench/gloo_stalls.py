"""Gloo all-reduce wall times between two local ranks, with gloo's event loop threads at the
default scheduling and at `SCHED_IDLE` (`dojo.runtime.gloothreads`), the two alternating.

    .venv/bin/python bench/gloo_stalls.py [--iters 1000] [--rounds 2]

Per case (FP32 elements per all-reduce, eager work between two all-reduces): the median and
mean wall of one all-reduce, and the share over 1.5 ms (a stall: a rank's thread woken by its
collective waits for a scheduler time slice while a loop thread holds the core). The work is
`units` tiny matmul-tanh steps (~30 us each), what a rank's phase runs between collectives.
On a machine with more cores than ranks the two settings should agree.
"""

from __future__ import annotations

import argparse
import os
import time
from statistics import mean, median
from typing import Any

import torch

CASES = ((1, 0), (4096, 0), (4096, 3), (65536, 3))
STALL_S = 1.5e-3


def _rank(rank: int, world: int, iters: int, rounds: int) -> list[dict[str, Any]]:
    import torch.distributed as dist

    from dojo.runtime.gloothreads import idle_loop_threads

    a = torch.randn(64, 64)
    out: dict[tuple[int, int, bool], list[float]] = {}
    for _ in range(rounds):
        for idle in (False, True):
            idle_loop_threads(idle)
            for elements, units in CASES:
                x = torch.ones(elements)
                dist.barrier()
                walls = out.setdefault((elements, units, idle), [])
                for _ in range(iters):
                    for _ in range(units):
                        a = torch.tanh(a @ a)
                    t0 = time.perf_counter()
                    dist.all_reduce(x)
                    walls.append(time.perf_counter() - t0)
    return [{"elements": e, "units": u, "idle": idle, "median_s": median(w), "mean_s": mean(w),
             "stalls": sum(t > STALL_S for t in w) / len(w)} for (e, u, idle), w in out.items()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from dojo.runtime.launch import launch

    rows = launch(_rank, 2, (args.iters, args.rounds), timeout_s=600, threads=1)[0]
    print(f"{os.cpu_count()} cores, torch {torch.__version__}, load {os.getloadavg()[0]:.2f}; "
          f"{args.rounds} x {args.iters} all-reduces per case, rank 0\n")
    print("| elements | work units | loop threads | median ms | mean ms | over 1.5 ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['elements']} | {r['units']} | {'SCHED_IDLE' if r['idle'] else 'default'} "
              f"| {r['median_s'] * 1e3:.3f} | {r['mean_s'] * 1e3:.3f} | {r['stalls']:.1%} |")


if __name__ == "__main__":
    main()
