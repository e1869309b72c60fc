"""The tile scheduler on a synthetic trace of 10,000 jobs on the ExaPOD (4 x 30 tiles).

    python bench/bench_scheduler.py [--jobs 10000] [--seed 0] [--load 0.9]

Replays the same trace under the service's scheduler (contiguous rectangles, priorities, fair
share, backfill with a reservation, preemption), plain FIFO (contiguous, no backfill) and an
allocator that ignores contiguity (any free tiles; otherwise the same rules). Prints a markdown
table: utilisation, fragmentation, mean and p95 wait per tenant, the worst wait of jobs of half
the machine or more, preemptions, jobs not given one rectangle, and the replay's own run time.
"""

from __future__ import annotations

import argparse
import time

from dojo.hardware import load_system
from dojo.service.mesh import machine_of
from dojo.service.scheduler import FIFO, SCATTER, Policy
from dojo.service.tracesim import replay, synthetic_trace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--load", type=float, default=0.9)
    args = ap.parse_args()
    pod = machine_of(load_system("exapod"))
    trace = synthetic_trace(args.jobs, pod, seed=args.seed, load=args.load)
    print(f"{args.jobs} jobs, seed {args.seed}, offered load {args.load:g} of "
          f"{pod.tiles} tiles ({pod.rows} x {pod.cols})\n")
    rows = []
    for name, policy in (("dojo (ours)", Policy()), ("FIFO", FIFO),
                         ("ignores contiguity", SCATTER)):
        t0 = time.perf_counter()
        r = replay(trace, pod, policy, name=name)
        rows.append((r, time.perf_counter() - t0))
    tenants = list(rows[0][0].wait_mean_s)
    print("| policy | utilisation | fragmentation | " + " | ".join(
        f"wait {t} mean / p95 (h)" for t in tenants)
        + " | worst wait >= 60 tiles (h) | preemptions | non-rectangular | replay (s) |")
    print("|---" * (7 + len(tenants)) + "|")
    for r, secs in rows:
        waits = " | ".join(f"{r.wait_mean_s[t] / 3600:.2f} / {r.wait_p95_s[t] / 3600:.1f}"
                           for t in tenants)
        print(f"| {r.policy} | {r.utilisation * 100:.1f} % | {r.fragmentation * 100:.1f} % | "
              f"{waits} | {r.large_wait_max_s / 3600:.1f} | {r.preemptions} | "
              f"{r.non_rectangular * 100:.1f} % | {secs:.1f} |")


if __name__ == "__main__":
    main()
