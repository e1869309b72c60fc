"""The tile scheduler: a pure function `schedule(queue, machine, clock) -> Decisions`.

No I/O, no wall clock, no randomness: the same inputs give the same decisions, so a pass can be
replayed from a log, tested without a server, and run 10,000 jobs deep in a trace simulation
(`dojo.service.tracesim`). The server applies the decisions (style rule 14).

The rules, in order (docs/service.md):
1. Order. Pending jobs sort by priority (higher first); within a priority by fair share: the
   tenant's recent usage share divided by its quota share (under-served tenants first), minus
   the job's wait over `aging_s` (so waiting always wins eventually), then submission time.
2. Gang allocation. A job gets a contiguous rectangle of tiles (`mesh.Grid.find`): all or none.
3. Reservation. The first job in order that cannot start gets a reservation: the earliest time
   and rectangle at which it fits, from the running jobs' wall-time limits.
4. Backfill. Later jobs start now only if they cannot delay that reservation: they end (by their
   limit) before it, or their rectangle does not overlap the reserved one. Large jobs are
   therefore never starved by a stream of small ones.
5. Preemption. When the first job cannot start and lower-priority preemptible jobs hold the
   tiles it needs, those jobs are preempted (checkpoint, requeue, resume later) and the tiles are
   reserved for it from now.
`Policy` turns rules off to give the baselines: plain FIFO (submission order, no backfill, no
preemption) and an allocator that ignores contiguity (any free tiles).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dojo.service.mesh import Cell, Grid, Machine, Rect

USAGE_HALF_LIFE_S = 24 * 3600.0  # usage for fair share halves every day (seconds)


@dataclass(frozen=True)
class Pending:
    """A queued job: `tiles` wanted, `limit_s` its wall-time limit (seconds), `submitted_s` on
    the scheduler's clock (seconds)."""

    id: str
    tenant: str
    tiles: int
    limit_s: float
    submitted_s: float = 0.0
    priority: int = 0


@dataclass(frozen=True)
class Running:
    """A job holding `cells` since `started_s`, expected to end by `started_s + limit_s`."""

    id: str
    tenant: str
    cells: tuple[Cell, ...]
    started_s: float
    limit_s: float
    priority: int = 0
    preemptible: bool = True

    @property
    def ends_s(self) -> float:
        return self.started_s + self.limit_s


@dataclass(frozen=True)
class Queue:
    """Everything a pass decides from: pending and running jobs, each tenant's recent usage
    (tile-seconds, any decay applied by the caller) and its weight (its quota)."""

    pending: tuple[Pending, ...] = ()
    running: tuple[Running, ...] = ()
    usage: Mapping[str, float] = field(default_factory=dict)
    weights: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    """Which rules apply; the defaults are the service's scheduler."""

    contiguous: bool = True
    fair_share: bool = True
    priorities: bool = True
    backfill: bool = True
    preempt: bool = True
    aging_s: float = 6 * 3600.0   # seconds of waiting worth one unit of fair-share excess
    depth: int = 64               # pending jobs examined per pass (Slurm's bf_max_job_test)


DEFAULT = Policy()
FIFO = Policy(fair_share=False, priorities=False, backfill=False, preempt=False)
SCATTER = Policy(contiguous=False)


@dataclass(frozen=True)
class Start:
    job: str
    cells: tuple[Cell, ...]
    rect: Rect | None  # None when the allocator ignored contiguity


@dataclass(frozen=True)
class Reservation:
    job: str
    at_s: float
    rect: Rect | None


@dataclass(frozen=True)
class Decisions:
    starts: tuple[Start, ...] = ()
    preempt: tuple[str, ...] = ()
    reservation: Reservation | None = None


def order(queue: Queue, clock: float, policy: Policy = DEFAULT) -> list[Pending]:
    """Pending jobs in the order the pass considers them (rule 1)."""
    if not policy.fair_share and not policy.priorities:
        return sorted(queue.pending, key=lambda j: (j.submitted_s, j.id))
    total_use = sum(queue.usage.values())
    tenants = {j.tenant for j in queue.pending}
    total_w = sum(queue.weights.get(t, 1.0) for t in tenants) or 1.0

    def share(tenant: str) -> float:
        if not policy.fair_share or total_use <= 0:
            return 0.0
        used = queue.usage.get(tenant, 0.0) / total_use
        return used / (queue.weights.get(tenant, 1.0) / total_w)

    def key(j: Pending) -> tuple[float, float, float, str]:
        prio = -j.priority if policy.priorities else 0
        fair = share(j.tenant) - (clock - j.submitted_s) / policy.aging_s
        return (prio, fair if policy.fair_share else 0.0, j.submitted_s, j.id)

    return sorted(queue.pending, key=key)


def schedule(queue: Queue, machine: Machine, clock: float, policy: Policy = DEFAULT
             ) -> Decisions:
    """One scheduling pass at time `clock` (seconds): which jobs start where, which running
    jobs are preempted, and the reservation held for the first job that must wait."""
    grid = Grid(machine)
    for held in queue.running:
        grid.set(held.cells, held.id)
    starts: list[tuple[Start, float]] = []
    reservation: Reservation | None = None
    preempt: tuple[str, ...] = ()
    failed: set[tuple[int, bool]] = set()  # (tiles, constrained) that found no room this pass
    for job in order(queue, clock, policy)[: policy.depth]:
        constrained = reservation is not None and clock + job.limit_s > reservation.at_s
        if (job.tiles, constrained) in failed:
            continue
        start = _place(grid, job, policy, reservation if constrained else None)
        if start is not None:
            grid.set(start.cells, job.id)
            starts.append((start, job.limit_s))
            continue
        failed.add((job.tiles, constrained))
        if reservation is None:
            if policy.preempt and policy.priorities:
                preempt, reservation = _preemption(grid, queue, job, clock)
            if reservation is None:
                reservation = _reserve(grid, queue.running, starts, job, clock, policy)
            if not policy.backfill:
                break
    return Decisions(tuple(s for s, _ in starts), preempt, reservation)


def _place(grid: Grid, job: Pending, policy: Policy, held: Reservation | None) -> Start | None:
    """Where `job` starts now; with `held` (a reservation the job would outlast), only where
    it leaves the reserved rectangle free (rule 4). None when it cannot start."""
    if not policy.contiguous:
        free = grid.free_cells()
        if held is not None:
            return None  # without rectangles a reservation is only a tile count: wait for it
        if len(free) < job.tiles:
            return None
        return Start(job.id, tuple(free[: job.tiles]), None)
    rect = grid.find(job.tiles, avoid=held.rect if held is not None else None)
    if rect is None:
        return None
    return Start(job.id, tuple(rect.cells()), rect)


def _reserve(grid: Grid, running: tuple[Running, ...], starts: list[tuple[Start, float]],
             job: Pending, clock: float, policy: Policy) -> Reservation | None:
    """The earliest (time, rectangle) at which `job` fits as running jobs end by their limits
    (jobs started in this pass end by clock + their limit)."""
    future = grid.copy()
    ends = [(r.ends_s, r.cells) for r in running]
    ends += [(clock + limit, s.cells) for s, limit in starts]
    for at, cells in sorted(ends):
        future.set(cells, None)
        if policy.contiguous:
            rect = future.find(job.tiles)
            if rect is not None:
                return Reservation(job.id, max(at, clock), rect)
        elif len(future.free_cells()) >= job.tiles:
            return Reservation(job.id, max(at, clock), None)
    return None


def _preemption(grid: Grid, queue: Queue, job: Pending, clock: float
                ) -> tuple[tuple[str, ...], Reservation | None]:
    """Lower-priority preemptible jobs whose tiles let `job` start (rule 5): the lowest
    priority and most recently started go first; only those overlapping the rectangle found are
    preempted."""
    victims = sorted((r for r in queue.running if r.preemptible and r.priority < job.priority),
                     key=lambda r: (r.priority, -r.started_s, r.id))
    trial = grid.copy()
    for i, victim in enumerate(victims):
        trial.set(victim.cells, None)
        rect = trial.find(job.tiles)
        if rect is None:
            continue
        needed = tuple(v.id for v in victims[: i + 1]
                       if any(rect.row <= r < rect.row + rect.rows
                              and rect.col <= c < rect.col + rect.cols for r, c in v.cells))
        return needed, Reservation(job.id, clock, rect)
    return (), None
