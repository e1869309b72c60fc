"""The simulator's event core against SimPy on the same pipeline schedules.

Both run one training step's pipeline (every stage executes its schedule's task order; a task
starts when its device is free and its input has arrived, after a transfer when it crosses
devices): `dojo.sim.pipeline.run_pipeline` (a work list since this session: each task's start
is computed once its inputs are known, no time-ordered queue), and the same rules as SimPy
processes (one per stage, one event per finished task). The makespans must agree; the
table gives wall time per step and the ratio.
Run: .venv/bin/python bench/bench_engine.py
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any

import simpy

from dojo.sim.pipeline import Task, order, run_pipeline

CASES = [  # (label, pp, virtual stages per device, micro-batches, schedule)
    ("GPT-3 on 1,024 A100 (pp 16, v 3, 128 micro-batches)", 16, 3, 128, "1f1b"),
    ("pp 64, 1F1B, 512 micro-batches", 64, 1, 512, "1f1b"),
    ("pp 8, GPipe, 256 micro-batches", 8, 1, 256, "gpipe"),
]
TRANSFER_S = 0.05


def duration(stage: int, task: Task) -> float:
    """Backward twice the forward; the last stage a little slower (it holds the head)."""
    return (2.0 if task[0] == "B" else 1.0) * (1.1 if stage == 0 else 1.0)


def simpy_pipeline(pp: int, virtual: int, micro: int, schedule: str,
                   dur: Callable[[int, Task], float], transfer_s: float) -> float:
    """The same pipeline as SimPy processes; returns the makespan in simulated seconds."""
    env = simpy.Environment()
    finished: dict[tuple[str, int, int], Any] = {}
    last_vs = pp * virtual - 1

    def event(key: tuple[str, int, int]) -> Any:
        if key not in finished:
            finished[key] = env.event()
        return finished[key]

    def device(stage: int) -> Generator[Any, Any, None]:
        for task in order(schedule, stage, pp, micro, virtual):
            kind, m, c = task
            vs = c * pp + stage
            if kind == "F":
                dep = ("F", m, vs - 1) if vs > 0 else None
            else:
                dep = ("B", m, vs + 1) if vs < last_vs else ("F", m, vs)
            if dep is not None:
                dep_end = yield event(dep)
                ready = dep_end + (0.0 if dep[2] % pp == stage else transfer_s)
                if ready > env.now:
                    yield env.timeout(ready - env.now)
            yield env.timeout(dur(stage, task))
            event((kind, m, vs)).succeed(env.now)

    for s in range(pp):
        env.process(device(s))
    env.run()
    return float(env.now)


def best_of(fn: Callable[[], float], repeat: int = 3) -> tuple[float, float]:
    """(result, best wall seconds)."""
    best, result = float("inf"), 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def main() -> None:
    print("| schedule | tasks | dojo engine s | SimPy s | SimPy / dojo | makespans equal |")
    print("|---|---:|---:|---:|---:|---|")
    for label, pp, v, m, schedule in CASES:
        args = (pp, v, m, schedule, duration, TRANSFER_S)
        ours, t_ours = best_of(lambda: max(s.end for s in run_pipeline(*args)))  # noqa: B023
        theirs, t_simpy = best_of(lambda: simpy_pipeline(*args))  # noqa: B023
        same = abs(ours - theirs) <= 1e-9 * max(1.0, ours)
        print(f"| {label} | {2 * pp * v * m:,} | {t_ours:.3f} | {t_simpy:.3f} | "
              f"{t_simpy / t_ours:.2f} | {'yes' if same else f'NO ({ours} vs {theirs})'} |")


if __name__ == "__main__":
    main()
