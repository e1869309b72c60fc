"""Pipeline schedules run on the event engine: bubbles come out of the schedule itself.

Each pipeline-stage device executes its forward (F) and backward (B) tasks in the order its
schedule gives (GPipe, 1F1B, Megatron's interleaved 1F1B). A task starts when its device is free
and its inputs have arrived: F of virtual stage v needs F of v-1 (plus the transfer), B of v needs
B of v+1. Tensor-parallel ranks and data-parallel replicas are identical, so one device per stage
stands for all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dojo.sim.engine import Engine

Task = tuple[str, int, int]  # ("F" | "B", micro-batch, chunk)


@dataclass(frozen=True)
class Span:
    """One executed task on one device's compute stream (seconds)."""

    stage: int
    kind: str
    micro: int
    chunk: int
    start: float
    end: float


def order(schedule: str, stage: int, pp: int, micro: int, virtual: int) -> list[Task]:
    """The task order of one device (`virtual` chunks per device)."""
    if schedule == "gpipe":
        fwd = [("F", m, c) for c in range(virtual) for m in range(micro)]
        bwd = [("B", m, c) for c in reversed(range(virtual)) for m in range(micro)]
        return fwd + bwd
    total = micro * virtual
    if virtual == 1:
        warm = min(pp - stage - 1, micro)
    else:
        warm = min((pp - stage - 1) * 2 + (virtual - 1) * pp, total)
    group = pp if virtual > 1 else 1

    def unit(k: int, backward: bool) -> Task:
        if virtual == 1:
            return ("B" if backward else "F", k, 0)
        m = (k // (group * virtual)) * group + k % group
        c = (k // group) % virtual
        return ("B", m, virtual - 1 - c) if backward else ("F", m, c)

    tasks = [unit(k, False) for k in range(warm)]
    for i in range(total - warm):
        tasks += [unit(warm + i, False), unit(i, True)]
    tasks += [unit(k, True) for k in range(total - warm, total)]
    return tasks


def run_pipeline(pp: int, virtual: int, micro: int, schedule: str,
                 duration: Callable[[int, Task], float], transfer_s: float) -> list[Span]:
    """Simulate one step's pipeline; returns every task's span, in completion order."""
    orders = [order(schedule, s, pp, micro, virtual) for s in range(pp)]
    pointer = [0] * pp
    busy = [False] * pp
    done: dict[tuple[str, int, int], float] = {}  # (kind, micro, virtual stage) -> end
    spans: list[Span] = []
    engine = Engine()
    last_vs = pp * virtual - 1

    def needs(stage: int, task: Task) -> tuple[str, int, int] | None:
        kind, m, c = task
        vs = c * pp + stage
        if kind == "F":
            return ("F", m, vs - 1) if vs > 0 else None
        return ("B", m, vs + 1) if vs < last_vs else ("F", m, vs)

    def try_start(stage: int) -> None:
        if busy[stage] or pointer[stage] >= len(orders[stage]):
            return
        task = orders[stage][pointer[stage]]
        dep = needs(stage, task)
        if dep is not None and dep not in done:
            return
        ready = engine.now
        if dep is not None:
            same = dep[2] % pp == stage
            ready = max(ready, done[dep] + (0.0 if same else transfer_s))
        busy[stage] = True
        pointer[stage] += 1
        end = ready + duration(stage, task)
        engine.at(end, lambda: finish(stage, task, ready, end))

    def finish(stage: int, task: Task, start: float, end: float) -> None:
        kind, m, c = task
        done[(kind, m, c * pp + stage)] = end
        spans.append(Span(stage, kind, m, c, start, end))
        busy[stage] = False
        # Only two devices can have been waiting on this: itself (now free) and the consumer
        # of this task's output (next virtual stage forward, previous one backward).
        vs = c * pp + stage
        consumer = vs + 1 if kind == "F" and vs < last_vs else vs - 1 if kind == "B" else vs
        try_start(stage)
        if 0 <= consumer <= last_vs and consumer % pp != stage:
            try_start(consumer % pp)

    for s in range(pp):
        engine.at(0.0, lambda s=s: try_start(s))  # type: ignore[misc]
    engine.run()
    if len(spans) != 2 * pp * virtual * micro:
        raise RuntimeError("pipeline schedule deadlocked")  # a bug in the schedule, not input
    return spans
