"""What a whole eager step pays that its phases, timed one at a time, do not (CPU closed loop).

    .venv/bin/python bench/step_gap.py [--models llama,resnet50] [--rounds 40] [--series 15]
        [--workers 4]

`bench/bench_cpu_loop.py --phases` compares a step's fastest time (rank 0 of `dojo run`, a
forkserver worker, 3 runs x 5 steps) with the sum of its phases' fastest times (60 steps in the
bench's own process, seconds later): two processes and two moments. Here both are measured in
one process with the variants alternating step by step, so that whatever the machine does
over seconds falls on both alike: A the runtime's `Trainer.step` (a fresh batch, as `dojo run`
steps), B the same step phase by phase (`bench_rank_phases._step`). Per model (dp=1, small
preset, main-thread CPU): A's and B's fastest and median step; the sum of B's phases' minima;
the same sum's expected minimum with B's phases re-paired at random across steps (the gap
that independent noise alone makes between a step's minimum and its phases' minima); each
phase's minimum by micro-batch (a forward right after the optimizer, which walks every
parameter and state, against a forward right after a backward: cold caches would show there);
Python's garbage collections (`gc.callbacks`), minor page faults, and the stepping thread's
migrations between CPUs and involuntary context switches per step. `--workers R` then runs,
per model, R rounds of a `dojo run` worker (6 steps) against a fresh in-process Trainer (6
steps), alternating.

`--series S` then times a fixed unit of eager work (the MLP stack's tiny training step,
`eager_stacks`, ~0.7 ms) back to back for S seconds and prints its fastest and median thread
CPU per quarter second: the machine's speed over time, which moves the minimum of every
window, however short, for seconds at a time (docs/benchmarks.md, "CPU closed loop").
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

PARTS = ("zero_grad", "forward", "backward", "optimizer")


def _gc_counter() -> list[float]:
    """[collections, seconds in the collector] of this process from now on."""
    state = [0.0, 0.0]
    started: list[float] = []

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            state[0] += 1
            state[1] += time.perf_counter() - started.pop()

    gc.callbacks.append(callback)
    return state


def _sched() -> tuple[int, int]:
    """(migrations between CPUs, involuntary context switches) of the calling thread so far."""
    with open("/proc/thread-self/sched") as f:
        moved = next(int(line.split()[-1]) for line in f if line.startswith("se.nr_migrations"))
    with open("/proc/thread-self/status") as f:
        switched = next(int(line.split()[1]) for line in f
                        if line.startswith("nonvoluntary_ctxt_switches"))
    return moved, switched


def interleaved(model: str, rounds: int = 40) -> dict[str, Any]:
    """A and B alternating on `model`'s small preset, dp=1, in this process (module docstring):
    {"whole": A's step seconds, "phased": B's, "phases": phase -> B's seconds per round (its
    steps' order), "gc": (collections, seconds) per step, "faults": minor page faults per step,
    "sched": (migrations, involuntary context switches) of the stepping thread per step,
    "simulated": seconds}; main-thread CPU, after three warm-up steps of each."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_rank_phases import _step
    from dojo.runtime import Job
    from dojo.runtime.job import build_bundle, simulate_job
    from dojo.runtime.trainer import Trainer

    job = Job(model=model, plan="dp=1,precision=fp32", system="cpu")
    sim = simulate_job(job)
    trainer = Trainer(sim.program, build_bundle(job))
    phases: dict[str, list[float]] = {}

    def add(name: str, a: tuple[float, ...], b: tuple[float, ...]) -> None:
        phases.setdefault(name, []).append(b[1] - a[1])  # main-thread CPU

    for _ in range(3):
        trainer.step(trainer.data.get(trainer.position))
        _step(trainer, trainer.position, add)
    phases.clear()
    whole: list[float] = []
    collected = _gc_counter()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    sched = _sched()
    for _ in range(rounds):
        batch = trainer.data.get(trainer.position)
        start = time.thread_time()
        trainer.step(batch)
        whole.append(time.thread_time() - start)
        _step(trainer, trainer.position, add)
    steps = 2 * rounds
    return {"whole": whole, "phased": phases["step"], "simulated": sim.result.step_time_s,
            "phases": {k: v for k, v in phases.items() if k.split()[0] in PARTS},
            "gc": (collected[0] / steps, collected[1] / steps),
            "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps,
            "sched": tuple((b - a) / steps for a, b in zip(sched, _sched()))}


def repaired_minimum(phases: dict[str, list[float]], draws: int = 200, seed: int = 0) -> float:
    """The expected fastest step if each phase's times were independent of the others': the
    minimum over rounds of the per-round sums, with every phase's times shuffled across the
    rounds, averaged over `draws` shufflings (seeded)."""
    rng = random.Random(seed)
    columns = list(phases.values())
    total = 0.0
    for _ in range(draws):
        shuffled = [rng.sample(c, len(c)) for c in columns]
        total += min(sum(parts) for parts in zip(*shuffled))
    return total / draws


def evidence_row(model: str, e: dict[str, Any]) -> str:
    """One markdown row of `interleaved`'s result (ms)."""
    ms, med = 1e3, statistics.median
    sums = sum(min(v) for v in e["phases"].values())
    fwd = [min(v) for k, v in e["phases"].items() if k.startswith("forward")]
    cells = [e["simulated"], min(e["whole"]), med(e["whole"]), min(e["phased"]), med(e["phased"]),
             sums, repaired_minimum(e["phases"])]
    return (f"| {model} | " + " | ".join(f"{v * ms:.1f}" for v in cells)
            + f" | {fwd[0] * ms:.2f} / {min(fwd[1:] or fwd) * ms:.2f} | {e['gc'][0]:.2f} "
            f"({e['gc'][1] * 1e6:.0f} us) | {e['faults']:.1f} | {e['sched'][0]:.2f} / "
            f"{e['sched'][1]:.1f} |")


HEADER = ("| model | simulated | A min | A median | B min | B median | B phase minima | "
          "re-paired min | forward 0 / later min | GC per step | faults per step | migrations / "
          "preemptions per step |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def _steps(trainer: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        batch = trainer.data.get(trainer.position)
        start = time.thread_time()
        trainer.step(batch)
        out.append(time.thread_time() - start)
    return out


def worker_rounds(model: str, rounds: int, steps: int = 6) -> list[tuple[float, float]]:
    """Per round, (a `dojo run` worker's fastest step, a fresh in-process Trainer's), each the
    fastest main-thread CPU of steps 2..`steps` (the loop's statistic), the two alternating:
    whether a forkserver worker steps slower than this process at the same moments."""
    from dojo.runtime import Job, run_distributed
    from dojo.runtime.job import build_bundle, simulate_job
    from dojo.runtime.trainer import Trainer

    job = Job(model=model, plan="dp=1,precision=fp32", system="cpu", steps=steps)
    program = simulate_job(job).program
    out = []
    for _ in range(rounds):
        _, results = run_distributed(job, timeout_s=120)
        here = _steps(Trainer(program, build_bundle(job)), steps)
        out.append((min(results[0]["step_thread_cpu_s"][1:]), min(here[1:])))
    return out


def speed_series(seconds: float, bin_s: float = 0.25) -> list[tuple[float, float]]:
    """(fastest, median) thread-CPU seconds of the reference unit per `bin_s` of wall time
    over `seconds` (module docstring)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from eager_stacks import _loss, _stacks

    model, x = _stacks()["mlp"]

    def unit() -> None:
        model.zero_grad(set_to_none=True)
        _loss(model(x)).backward()

    for _ in range(20):
        unit()
    out: list[tuple[float, float]] = []
    times: list[float] = []
    end = time.perf_counter() + seconds
    mark = time.perf_counter()
    while time.perf_counter() < end:
        start = time.thread_time()
        unit()
        times.append(time.thread_time() - start)
        if time.perf_counter() - mark >= bin_s:
            out.append((min(times), statistics.median(times)))
            times, mark = [], time.perf_counter()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="llama", help="comma-separated zoo models")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--series", type=float, default=0.0, help="seconds of the speed series")
    parser.add_argument("--workers", type=int, default=0,
                        help="rounds of a dojo run worker against an in-process Trainer")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.2f}; ms of main-thread CPU, {args.rounds} rounds "
          f"of A then B\n\n{HEADER}")
    for model in filter(None, args.models.split(",")):
        print(evidence_row(model, interleaved(model, args.rounds)), flush=True)
    for model in filter(None, args.models.split(",") if args.workers else []):
        pairs = worker_rounds(model, args.workers)
        print(f"\n{model}, fastest of steps 2-6, worker / in-process (ms): "
              + ", ".join(f"{a * 1e3:.1f} / {b * 1e3:.1f}" for a, b in pairs), flush=True)
    if args.series:
        bins = speed_series(args.series)
        print("\nreference unit per quarter second, fastest/median us: "
              + " ".join(f"{a * 1e6:.0f}/{b * 1e6:.0f}" for a, b in bins))
    print(f"\nload average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
