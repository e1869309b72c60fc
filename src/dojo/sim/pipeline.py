"""Pipeline schedules: bubbles come out of the schedule itself.

Each pipeline-stage device executes its forward (F) and backward (B) tasks in the order its
schedule gives (GPipe, 1F1B, Megatron's interleaved 1F1B). A task starts when its device is free
and its input has arrived: F of virtual stage v needs F of v-1 (plus the transfer), B of v needs
B of v+1. Tensor-parallel ranks and data-parallel replicas are identical, so one device per stage
stands for all of them. Nothing else contends, so a task's start is max(its device's previous
end, its input's end + transfer) whatever order the tasks are computed in: `run_pipeline`
computes them as their inputs become known (a work list, no time-ordered queue needed).

Bounded work. Micro-batches are identical: a task's duration depends on its device, kind and
chunk, never on its micro-batch. Under 1F1B and interleaved 1F1B every device runs `warm`
forwards, then (F, B) pairs, then backwards, and shifting a device's order by one period of
pairs (U x interleave pairs, U = 1 micro-batch for 1F1B, N for the interleaved schedule) gives
the same tasks with micro-batches U later. `run_pipeline` runs the pairs a period at a time
("rounds") and records after each the state that decides everything later: how far each device
got, when it is free, and the ends of tasks whose consumers have not started. The step is a
max-plus linear map of that state, so if the state after round r equals the state after round
r - c with every time later by the same L (and micro-batches later by c U), every later round
repeats it: the state after round r + n c is that state n L later. The run then jumps n whole
periods (leaving one round and the drain to simulate) and finishes directly. The rounds needed
are the map's transient plus its cyclicity c (observed: a few rounds; a test compares the jump
with the direct simulation for every micro-batch count to 64), so the work is O(pp x interleave)
tasks per round and independent of the micro-batch count; the skipped tasks are not returned as
spans (`Timeline.skipped` counts them). GPipe holds every micro-batch in flight and is
simulated directly, up to `MAX_TASKS`.

Micro-batch groups (Megatron-Core's microbatch_group_size_per_vp_stage, Llama 3's tunable N).
The interleaved order runs N contiguous micro-batches through one virtual stage before moving
to the next (`group`; 0 means N = pp, Megatron's fixed choice): forwards take micro-batches
0..N-1 through chunks 0..V-1, then N..2N-1, and so on (the last group holds the M mod N left
over, or N); backwards the same with the chunks reversed. Device s runs
warm = (V - 1) N + 2 min(pp - 1 - s, N - 1) forwards first. For N >= pp that is Megatron-Core's
2 (pp - 1 - s) + (V - 1) N (`get_pp_rank_microbatches`); for N < pp (which Megatron-Core
refuses, and Meta's schedule allows) Megatron's spacing of two units per rank cannot hold:
device 0's forward k of a chunk c >= 1 needs device pp-1's forward k - N of chunk c - 1, and
device pp-1 reaches that one only after its backward k - N - warm(pp-1) - 1, which waits for
device 0's backward k - 2N - warm(pp-1) - 1, which device 0 runs after its own forward
k - 2N - (warm(0) - warm(pp-1)) - 1. The order is a cycle (it deadlocks) unless
warm(0) - warm(pp-1) <= 2N. Keeping Megatron's two units per rank (forwards and backwards of
all devices in step) and its two units of slack at the wrap (2 (pp - 1) = 2N - 2 at N = pp)
caps the spacing at 2 (N - 1): the first pp - N + 1 devices run the same warm phase.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from dojo.errors import DojoError

Task = tuple[str, int, int]  # ("F" | "B", micro-batch, chunk)
EXPLICIT_TASKS = 100_000   # up to this many tasks a run is simulated task by task
MAX_TASKS = 4_000_000      # a run that would need more explicit tasks is refused
MAX_ROUNDS = 256           # rounds searched for a periodic state before giving up on the jump
RING_MAX_UNITS = 4_096     # `ring_spans` walks orders of at most this many forwards per device


@dataclass(frozen=True)
class Span:
    """One executed task on one device's compute stream (seconds)."""

    stage: int
    kind: str
    micro: int
    chunk: int
    start: float
    end: float


def order(schedule: str, stage: int, pp: int, micro: int, virtual: int,
          group: int = 0) -> list[Task]:
    """The task order of one device (`virtual` chunks per device, `group` micro-batches per
    virtual stage at a time, 0 meaning pp)."""
    return [task_at(schedule, stage, pp, micro, virtual, i, group)
            for i in range(2 * micro * virtual)]


def group_of(pp: int, virtual: int, group: int) -> int:
    """Micro-batches per group of the order: 1 without interleaving, else `group` or pp."""
    return 1 if virtual == 1 else group or pp


def warm_units(schedule: str, stage: int, pp: int, micro: int, virtual: int,
               group: int = 0) -> int:
    """Forwards a device runs before its first backward (1F1B and interleaved 1F1B; see the
    module docstring for the interleaved (V - 1) N + 2 min(pp - 1 - s, N - 1))."""
    if virtual == 1:
        return min(pp - stage - 1, micro)
    n = group_of(pp, virtual, group)
    return min((virtual - 1) * n + 2 * min(n, pp) * (pp - 1 - stage) // pp, micro * virtual)


def task_at(schedule: str, stage: int, pp: int, micro: int, virtual: int, i: int,
            group: int = 0) -> Task:
    """The `i`-th task of one device's order, in O(1)."""
    total = micro * virtual
    if schedule == "gpipe":
        if i < total:
            return ("F", i % micro, i // micro)
        return ("B", (i - total) % micro, virtual - 1 - (i - total) // micro)
    warm = warm_units(schedule, stage, pp, micro, virtual, group)
    n = group_of(pp, virtual, group)
    if i < warm:
        return unit(i, False, micro, virtual, n)
    j = i - warm
    if j < 2 * (total - warm):
        return unit(warm + j // 2, False, micro, virtual, n) if j % 2 == 0 else \
            unit(j // 2, True, micro, virtual, n)
    return unit(j - (total - warm), True, micro, virtual, n)


def unit(k: int, backward: bool, micro: int, virtual: int, group: int) -> Task:
    """The `k`-th forward (or backward) of the order: groups of `group` micro-batches, each
    through every chunk in turn (Megatron-Core's `get_schedule_table`); the last group holds
    what is left, micro - `last_start(micro, group)` micro-batches."""
    if virtual == 1:
        return ("B" if backward else "F", k, 0)
    start = last_start(micro, group)
    if k < start * virtual:
        m = (k // (group * virtual)) * group + k % group
        c = (k // group) % virtual
    else:
        left = micro - start
        m, c = start + (k - start * virtual) % left, (k - start * virtual) // left
    return ("B", m, virtual - 1 - c) if backward else ("F", m, c)


def last_start(micro: int, group: int) -> int:
    """The first micro-batch of the order's last group (every group before it holds `group`)."""
    return group * ((micro - 1) // group)


@dataclass
class _Run:
    """The state of one pipeline run (see the module docstring)."""

    pp: int
    virtual: int
    micro: int
    schedule: str
    duration: Callable[[int, Task], float]
    transfer_s: float
    group: int
    pointer: list[int]
    free: list[float]
    done: dict[tuple[str, int, int], float]
    spans: list[Span]

    def needs(self, stage: int, task: Task) -> tuple[str, int, int] | None:
        kind, m, c = task
        vs = c * self.pp + stage
        if kind == "F":
            return ("F", m, vs - 1) if vs > 0 else None
        return ("B", m, vs + 1) if vs < self.pp * self.virtual - 1 else ("F", m, vs)

    def advance(self, limits: list[int]) -> None:
        """Run every task that can run without passing `limits` (positions per device)."""
        pp, last = self.pp, self.pp * self.virtual - 1
        work = list(range(pp))
        while work:
            s = work.pop()
            while self.pointer[s] < limits[s]:
                task = task_at(self.schedule, s, pp, self.micro, self.virtual, self.pointer[s],
                               self.group)
                dep = self.needs(s, task)
                if dep is not None and dep not in self.done:
                    break
                start = self.free[s]
                if dep is not None:
                    hop = 0.0 if dep[2] % pp == s else self.transfer_s
                    start = max(start, self.done.pop(dep) + hop)
                end = start + self.duration(s, task)
                kind, m, c = task
                vs = c * pp + s
                if kind == "F" or vs > 0:
                    self.done[(kind, m, vs)] = end
                self.spans.append(Span(s, kind, m, c, start, end))
                self.pointer[s] += 1
                self.free[s] = end
                consumer = vs + 1 if kind == "F" and vs < last else vs - 1 if kind == "B" else vs
                if 0 <= consumer <= last and consumer % pp != s:
                    work.append(consumer % pp)

    def state(self, limits: list[int], base: int) -> tuple[tuple[object, ...], list[float]]:
        """(structure, times): pointers relative to `limits`, pending inputs keyed relative to
        micro-batch `base`, and the times (devices free, pending inputs' ends)."""
        keys = sorted(self.done)
        structure = (tuple(p - lim for p, lim in zip(self.pointer, limits)),
                     tuple((k, m - base, v) for k, m, v in keys))
        return structure, [*self.free, *(self.done[k] for k in keys)]

    def jump(self, micro: int, seconds: float, tasks: int) -> None:
        """Move the state `micro` micro-batches, `seconds` and `tasks` positions later."""
        self.pointer = [p + tasks for p in self.pointer]
        self.free = [t + seconds for t in self.free]
        self.done = {(k, m + micro, v): t + seconds for (k, m, v), t in self.done.items()}


def makespan_bounds(pp: int, micro: int, forward: list[float], backward: list[float],
                    transfer_s: float) -> tuple[list[float], list[float]]:
    """Per device s, (a lower bound on the end of its last task, the tail that must follow it)
    for any task order, with `forward`/`backward` seconds per virtual stage (chunk c of device
    s is virtual stage c pp + s). Device s's first task is a forward of a virtual stage >= s,
    so it waits for the forwards of stages 0..s-1 and s transfers (its head); then it runs its
    micro x (all its chunks' F + B) seconds of tasks; its last task is a backward of a virtual
    stage >= s, and the backwards of stages s-1..0 and s transfers follow it (the tail)."""
    interleave = len(forward) // pp
    ends, tails = [], []
    head = tail = 0.0
    for s in range(pp):
        work = sum(forward[c * pp + s] + backward[c * pp + s] for c in range(interleave))
        ends.append(head + micro * work)
        tails.append(tail)
        head += forward[s] + transfer_s
        tail += backward[s] + transfer_s
    return ends, tails


def group_chain_bound(pp: int, micro: int, group: int, forward: list[float],
                      backward: list[float], transfer_s: float = 0.0) -> float:
    """A lower bound on the end of device 0's last task in the interleaved order with groups
    of `group` micro-batches (0: pp), `forward`/`backward` seconds per virtual stage (at least
    each task's) and at least `transfer_s` per hop: device 0 runs each group's backward units
    one group after another, chunks
    last to first (`unit`), so a group's block lasts at least its chain of chunk changes:
    after B(m, c) on device 0, B(m, c - 1) waits for chunk c - 1's backwards on devices
    pp - 1 .. 1, or for the group's other units of chunk c, which device 0 runs first. The
    first block starts after micro-batch 0's whole forward and chunk V - 1's backwards above
    device 0. With N < pp the chain outlasts N backwards and the ring stalls."""
    virtual = len(forward) // pp
    n = group_of(pp, virtual, group)
    own = [backward[c * pp] for c in range(virtual)]                  # device 0's
    chain = [sum(backward[c * pp + 1:(c + 1) * pp]) + pp * transfer_s for c in range(virtual)]

    def block(size: int) -> float:
        return own[-1] + (size - 1) * own[0] + sum(
            max(chain[c - 1], (size - 1) * own[c]) + own[c - 1] for c in range(virtual - 1, 0, -1))

    whole = (micro - 1) // n                                          # groups before the last
    return (sum(forward) + (pp * virtual - 2) * transfer_s + chain[-1] + whole * block(n)
            + block(micro - whole * n))


def ring_bound(pp: int, micro: int, group: int, forward: list[float],
               backward: list[float], transfer_s: float = 0.0, stage: int = 0,
               schedule: str = "interleaved") -> float:
    """A lower bound on the end of device `stage`'s last task: the last end of `ring_spans`."""
    return _ring_run(pp, micro, group, forward, backward, transfer_s, stage, schedule, None)


@lru_cache(maxsize=32)
def _order_of(schedule: str, stage: int, pp: int, micro: int, virtual: int,
              group: int) -> tuple[Task, ...]:
    """`order`, kept: a plan search asks for the same few orders many times."""
    return tuple(order(schedule, stage, pp, micro, virtual, group))


SHORT_ORDER = 64   # forwards per device: orders this short are kept 1,024 at a time


@lru_cache(maxsize=1024)
def _short_order_of(schedule: str, stage: int, pp: int, micro: int, virtual: int,
                    group: int) -> tuple[Task, ...]:
    """`order` of at most `SHORT_ORDER` forwards, kept: the plan search's `ring_bound` asks
    for thousands of them (`timebounds.RING_UNITS`), each at most 128 tasks, so 1,024 hold
    about 1 MB: their tasks are shared. DeepSeek-V3's 2,048-GPU search asks 42,738 times for
    484 orders; `_order_of`'s 32 missed about two thirds of its asks."""
    return tuple(_TASKS.setdefault(t, t) for t in order(schedule, stage, pp, micro, virtual,
                                                         group))


_TASKS: dict[Task, Task] = {}   # one tuple per task: (kind, micro-batch < SHORT_ORDER, chunk)


def ring_spans(pp: int, micro: int, group: int, forward: list[float],
               backward: list[float], transfer_s: float = 0.0, stage: int = 0,
               schedule: str = "interleaved") -> list[Span]:
    """Device `stage`'s tasks in the order of `schedule` (1F1B where there is one virtual stage
    per device; the interleaved order's groups of `group` micro-batches, 0: pp; or GPipe's),
    each no later than it starts and ends in `run_pipeline`, from `forward`/`backward` seconds
    per virtual stage (at least each task's) and at least `transfer_s` per hop. The device
    runs its order task by task, each starting at max(its previous task's end, a time its input
    cannot beat): F(m, c) waits for F(m, c - 1) here and the ring of the other devices'
    forwards between (every one at least its duration, every hop `transfer_s`); B(m, c) for
    B(m, c + 1) here and the ring's backwards; B(m, V - 1) for F(m, V - 1) here, the forwards
    and backwards above it. Each wait drops the other devices' own queues, so it is a
    relaxation of `run_pipeline` (which starts every task at the max of the same device's
    previous end and its input's end plus the hop). Unlike `group_chain_bound` it keeps this
    device's forwards and backwards as the order runs them, so it sees the stalls of N < pp
    micro-batch groups on both rings and GPipe's with few micro-batches: for gpt3-175b's ExaPOD
    plans of pp 10, 6 virtual stages and N = 5 it is within 0.1 % of device 0's simulated
    end, where the chain bound is 19 % below. O(micro-batches x V): callers keep it to orders of
    `RING_MAX_UNITS` forwards (the simulation jumps over a longer steady state; this walks it)."""
    spans: list[Span] = []
    _ring_run(pp, micro, group, forward, backward, transfer_s, stage, schedule, spans)
    return spans


def _ring_run(pp: int, micro: int, group: int, forward: list[float], backward: list[float],
              transfer_s: float, stage: int, schedule: str, spans: list[Span] | None) -> float:
    """`ring_spans`' run; appends the spans to `spans` unless None; returns the last end."""
    virtual = len(forward) // pp
    f = [forward[c * pp + stage] for c in range(virtual)]
    b = [backward[c * pp + stage] for c in range(virtual)]
    hops = pp * transfer_s
    up_f = [sum(forward[c * pp + stage + 1:(c + 1) * pp]) for c in range(virtual)]
    up_b = [sum(backward[c * pp + stage + 1:(c + 1) * pp]) for c in range(virtual)]
    below_f = [sum(forward[c * pp:c * pp + stage]) for c in range(virtual)]
    below_b = [sum(backward[c * pp:c * pp + stage]) for c in range(virtual)]
    ring_f = [up_f[c] + below_f[c + 1] + hops for c in range(virtual - 1)]
    ring_b = [up_b[c] + below_b[c + 1] + hops for c in range(virtual - 1)]
    turn = up_f[-1] + up_b[-1] + 2 * (pp - 1 - stage) * transfer_s
    start_f = [0.0] * (micro * virtual)
    end_f = [0.0] * (micro * virtual)
    end_b = [0.0] * (micro * virtual)
    free = below_f[0] + stage * transfer_s               # the first forward's input
    kept = _short_order_of if micro * virtual <= SHORT_ORDER else _order_of
    for kind, m, c in kept(schedule, stage, pp, micro, virtual, group):
        i = m * virtual + c
        if kind == "F":
            start = max(free, start_f[i - 1] + f[c - 1] + ring_f[c - 1]) if c else free
            start_f[i], free = start, start + f[c]
            end_f[i] = free
        else:
            start = max(free, end_f[i] + turn if c == virtual - 1 else end_b[i + 1] + ring_b[c])
            free = end_b[i] = start + b[c]
        if spans is not None:
            spans.append(Span(stage, kind, m, c, start, free))
    return free


def run_pipeline(pp: int, virtual: int, micro: int, schedule: str,
                 duration: Callable[[int, Task], float], transfer_s: float,
                 explicit: int | None = None, group: int = 0) -> list[Span]:
    """Simulate one step's pipeline; returns the spans of the tasks it simulated, in completion
    order: every task when the run has at most `explicit` tasks, else all but the periods the
    steady state let it skip (module docstring), with the true times of those it kept.
    `group`: micro-batches per virtual stage at a time (interleaved; 0 means pp)."""
    return simulate_pipeline(pp, virtual, micro, schedule, duration, transfer_s, explicit,
                             group)[0]


def simulate_pipeline(pp: int, virtual: int, micro: int, schedule: str,
                      duration: Callable[[int, Task], float], transfer_s: float,
                      explicit: int | None = None, group: int = 0
                      ) -> tuple[list[Span], int]:
    """`run_pipeline`, and how many tasks per device were skipped (0 when none); `explicit`
    defaults to `EXPLICIT_TASKS`."""
    explicit = EXPLICIT_TASKS if explicit is None else explicit
    run = _Run(pp, virtual, micro, schedule, duration, transfer_s, group, [0] * pp, [0.0] * pp,
               {}, [])
    per_device = 2 * micro * virtual
    skipped = 0
    if pp * per_device > explicit and schedule != "gpipe":
        skipped = _run_periods(run)
    if pp * (per_device - skipped) > MAX_TASKS:
        raise DojoError(f"the pipeline has {pp} x {per_device} tasks and no steady state that "
                        f"repeats: more than {MAX_TASKS} to simulate one by one (schedule="
                        f"{schedule}, {micro} micro-batches); use fewer micro-batches (a larger "
                        "mb) or schedule=1f1b")
    run.advance([per_device] * pp)
    if any(p != per_device for p in run.pointer):
        raise RuntimeError("pipeline schedule deadlocked")  # a bug in the schedule, not input
    run.spans.sort(key=lambda s: (s.end, s.start, s.stage))
    return run.spans, skipped


def _run_periods(run: _Run) -> int:
    """Run rounds of one period until the state repeats, then jump; returns the tasks per
    device jumped over (0 if the state never repeated within `MAX_ROUNDS`)."""
    pp, v, micro = run.pp, run.virtual, run.micro
    shift = group_of(pp, v, run.group)                # micro-batches per period
    step = 2 * shift * v                              # tasks per device per period
    warm = [warm_units(run.schedule, s, pp, micro, v, run.group) for s in range(pp)]
    # forwards in whole groups: a last group of fewer micro-batches breaks the period
    regular = micro if micro % shift == 0 else last_start(micro, shift)
    rounds = min((regular * v - w) // (shift * v) for w in warm)  # periods of pairs everywhere
    history: list[tuple[tuple[object, ...], list[float]]] = []
    for r in range(min(rounds, MAX_ROUNDS)):
        limits = [w + (r + 1) * step for w in warm]
        run.advance(limits)
        history.append(run.state(limits, (r + 1) * shift))
        found = _period(history)
        if found is None:
            continue
        cycle, lag = found
        jump = (rounds - r - 2) // cycle            # whole periods, keeping a round in hand
        if jump <= 0:
            return 0
        run.jump(jump * cycle * shift, jump * lag, jump * cycle * step)
        return jump * cycle * step
    return 0


def _period(history: list[tuple[tuple[object, ...], list[float]]]) -> tuple[int, float] | None:
    """(rounds c, seconds L) if the last state repeats the one c rounds before, and that one
    the one before it, every time later by L (to 1e-12 of the times)."""
    last, times = history[-1]
    for c in range(1, (len(history) - 1) // 2 + 1):
        mid, before = history[-1 - c], history[-1 - 2 * c]
        if not last == mid[0] == before[0]:
            continue
        lag = times[0] - mid[1][0]
        tol = 1e-12 * max(abs(t) for t in times)
        if all(abs(a - b - lag) <= tol for a, b in zip(times, mid[1])) and \
                all(abs(a - b - lag) <= tol for a, b in zip(mid[1], before[1])):
            return c, lag
    return None
