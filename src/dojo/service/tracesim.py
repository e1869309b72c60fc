"""Trace-driven simulation of the tile scheduler: replay a job trace through `schedule`.

Time is simulated (seconds), nothing sleeps: every arrival and completion is an event, and after
each batch of simultaneous events one scheduling pass runs on the queue as it stands. A job runs
for its `runtime_s` (it never exceeds its `limit_s`); a preempted job keeps the work up to its last
checkpoint (every `checkpoint_s`) and pays `restart_s` when it resumes.

What is measured (`Report`): utilisation (allocated tile-seconds over tiles x makespan),
fragmentation (time-averaged 1 - largest free rectangle / free tiles, while jobs wait), waits
per tenant, the worst wait of the largest jobs, and for the allocator that ignores contiguity the
share of jobs whose tiles are not one rectangle.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field

from dojo.service.mesh import Grid, Machine
from dojo.service.scheduler import (
    DEFAULT,
    USAGE_HALF_LIFE_S,
    Decisions,
    Pending,
    Policy,
    Queue,
    Running,
    schedule,
)


@dataclass(frozen=True)
class TraceJob:
    """One job of a trace: times in seconds from the trace's start."""

    id: str
    tenant: str
    tiles: int
    submit_s: float
    runtime_s: float
    limit_s: float
    priority: int = 0


@dataclass
class Report:
    policy: str
    jobs: int
    makespan_s: float
    utilisation: float
    fragmentation: float
    wait_mean_s: dict[str, float]
    wait_p95_s: dict[str, float]
    large_wait_max_s: float
    preemptions: int
    non_rectangular: float
    passes: int = 0


def synthetic_trace(n: int, machine: Machine, *, seed: int = 0, load: float = 0.9,
                    weights: dict[str, float] | None = None) -> list[TraceJob]:
    """`n` jobs of a mix of sizes (mostly 1-8 tiles, a few of half and all of the machine),
    log-normal runtimes (median 1 h, 5 min to 24 h), limits 1.2-3x the runtime, 5 % urgent
    (priority 1), Poisson arrivals at `load` times the machine's tile-seconds."""
    rng = random.Random(seed)
    weights = weights or {"auto": 4.0, "robotics": 3.0, "lab": 2.0, "startup": 1.0}
    full = machine.tiles
    sizes = [(1, 0.30), (2, 0.20), (4, 0.15), (6, 0.10), (8, 0.08), (12, 0.07),
             (max(1, full // 5), 0.05), (max(1, full // 4), 0.02), (max(1, full // 2), 0.02),
             (full, 0.01)]
    tenants, tw = list(weights), list(weights.values())
    draws = []
    for i in range(n):
        tiles = rng.choices([s for s, _ in sizes], [p for _, p in sizes])[0]
        runtime = min(24 * 3600.0, max(300.0, rng.lognormvariate(math.log(3600.0), 1.0)))
        limit = math.ceil(runtime * rng.uniform(1.2, 3.0) / 60.0) * 60.0
        draws.append((f"j{i:05d}", rng.choices(tenants, tw)[0], tiles, runtime, limit,
                      1 if rng.random() < 0.05 else 0))
    mean_work = sum(d[2] * d[3] for d in draws) / n
    gap = mean_work / (load * full)
    t, out = 0.0, []
    for jid, tenant, tiles, runtime, limit, prio in draws:
        t += rng.expovariate(1.0 / gap)
        out.append(TraceJob(jid, tenant, tiles, t, runtime, limit, prio))
    return out


@dataclass
class _State:
    pending: dict[str, Pending] = field(default_factory=dict)
    running: dict[str, Running] = field(default_factory=dict)
    left_s: dict[str, float] = field(default_factory=dict)    # work still to do
    version: dict[str, int] = field(default_factory=dict)     # invalidates stale end events
    first_start: dict[str, float] = field(default_factory=dict)
    usage: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    busy_tile_s: float = 0.0
    frag_area: float = 0.0
    frag_time: float = 0.0
    preemptions: int = 0
    scattered: int = 0
    passes: int = 0
    used: set[tuple[int, int]] = field(default_factory=set)  # tiles held: a double booking raises


def replay(trace: list[TraceJob], machine: Machine, policy: Policy = DEFAULT, *,
           name: str = "", weights: dict[str, float] | None = None,
           checkpoint_s: float = 600.0, restart_s: float = 60.0) -> Report:
    """Run `trace` through the scheduler on `machine`; see the module docstring."""
    jobs = {j.id: j for j in trace}
    weights = weights or {"auto": 4.0, "robotics": 3.0, "lab": 2.0, "startup": 1.0}
    st = _State()
    events: list[tuple[float, int, str, int]] = [(j.submit_s, 1, j.id, 0) for j in trace]
    heapq.heapify(events)
    clock = trace[0].submit_s if trace else 0.0
    decay = math.log(2) / USAGE_HALF_LIFE_S
    while events:
        now = events[0][0]
        _account(st, machine, now - clock, decay)
        clock = now
        while events and events[0][0] == now:
            _, kind, jid, ver = heapq.heappop(events)
            if kind == 1:
                j = jobs[jid]
                st.pending[jid] = Pending(jid, j.tenant, j.tiles, j.limit_s, j.submit_s,
                                          j.priority)
                st.left_s[jid] = j.runtime_s
            elif st.version.get(jid) == ver and jid in st.running:
                run = st.running.pop(jid)
                st.used.difference_update(run.cells)
                st.busy_tile_s += len(run.cells) * (now - run.started_s)
        for _ in range(4):  # a pass that preempts is followed by one that starts the waiter
            queue = Queue(tuple(st.pending.values()), tuple(st.running.values()),
                          dict(st.usage), weights)
            decisions = schedule(queue, machine, clock, policy)
            st.passes += 1
            _apply(st, decisions, jobs, clock, events, checkpoint_s, restart_s)
            if not decisions.preempt:
                break
    return _report(st, trace, machine, name, clock)


def _account(st: _State, machine: Machine, dt: float, decay: float) -> None:
    """Advance usage and the fragmentation integral over `dt` seconds."""
    if dt <= 0:
        return
    factor = math.exp(-decay * dt)
    for t in st.usage:
        st.usage[t] *= factor
    for run in st.running.values():
        st.usage[run.tenant] += len(run.cells) * dt
    if st.pending:
        grid = Grid(machine)
        for run in st.running.values():
            grid.set(run.cells, run.id)
        free = machine.tiles - sum(len(r.cells) for r in st.running.values())
        if free > 0:
            st.frag_area += (1.0 - grid.largest_free_rect() / free) * dt
        st.frag_time += dt


def _apply(st: _State, decisions: Decisions, jobs: dict[str, TraceJob], clock: float,
           events: list[tuple[float, int, str, int]], checkpoint_s: float,
           restart_s: float) -> None:
    for jid in decisions.preempt:
        run = st.running.pop(jid)
        st.used.difference_update(run.cells)
        ran = clock - run.started_s
        st.busy_tile_s += len(run.cells) * ran
        saved = math.floor(ran / checkpoint_s) * checkpoint_s
        st.left_s[jid] = st.left_s[jid] - saved + restart_s
        j = jobs[jid]
        st.pending[jid] = Pending(jid, j.tenant, j.tiles, j.limit_s, j.submit_s, j.priority)
        st.preemptions += 1
    for start in decisions.starts:
        p = st.pending.pop(start.job)
        if st.used.intersection(start.cells) or len(start.cells) < p.tiles:
            raise RuntimeError(f"scheduler bug: {start.job} given {start.cells}")
        st.used.update(start.cells)
        ver = st.version.get(start.job, 0) + 1
        st.version[start.job] = ver
        st.running[start.job] = Running(start.job, p.tenant, start.cells, clock,
                                        p.limit_s, p.priority)
        st.first_start.setdefault(start.job, clock)
        if start.rect is None and not _is_rectangle(start.cells):
            st.scattered += 1
        heapq.heappush(events, (clock + st.left_s[start.job], 2, start.job, ver))


def _is_rectangle(cells: tuple[tuple[int, int], ...]) -> bool:
    rows = [r for r, _ in cells]
    cols = [c for _, c in cells]
    return (max(rows) - min(rows) + 1) * (max(cols) - min(cols) + 1) == len(cells)


def _report(st: _State, trace: list[TraceJob], machine: Machine, name: str, end: float
            ) -> Report:
    waits: dict[str, list[float]] = defaultdict(list)
    large = 0.0
    for j in trace:
        w = st.first_start[j.id] - j.submit_s
        waits[j.tenant].append(w)
        if j.tiles >= machine.tiles // 2:
            large = max(large, w)
    span = end - trace[0].submit_s if trace else 0.0
    p95 = {t: sorted(ws)[int(0.95 * (len(ws) - 1))] for t, ws in waits.items()}
    return Report(
        policy=name, jobs=len(trace), makespan_s=span,
        utilisation=st.busy_tile_s / (machine.tiles * span) if span else 0.0,
        fragmentation=st.frag_area / st.frag_time if st.frag_time else 0.0,
        wait_mean_s={t: sum(ws) / len(ws) for t, ws in sorted(waits.items())},
        wait_p95_s=dict(sorted(p95.items())), large_wait_max_s=large,
        preemptions=st.preemptions, non_rectangular=st.scattered / len(trace) if trace else 0.0,
        passes=st.passes)

