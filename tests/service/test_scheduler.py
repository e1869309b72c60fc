"""The tile scheduler as a pure function: each rule on a hand-built queue whose right answer is
worked out in the comments, invariants on random queues, and a small trace replay."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dojo.hardware import load_system
from dojo.service.mesh import Grid, Machine, Rect, machine_of, shapes
from dojo.service.scheduler import FIFO, SCATTER, Pending, Policy, Queue, Running, schedule
from dojo.service.tracesim import replay, synthetic_trace

V1 = Machine(2, 3, "v1")


def running(jid: str, cells: list[tuple[int, int]], ends: float, prio: int = 0,
            tenant: str = "a") -> Running:
    return Running(jid, tenant, tuple(cells), 0.0, ends, prio)


def test_machines_are_the_published_tile_counts() -> None:
    # Hot Chips 34: V1 = 6 tiles (2 x 3 per tray); AI Day 2021: ExaPOD = 120 tiles.
    v1, pod = machine_of(load_system("v1")), machine_of(load_system("exapod"))
    assert (v1.rows, v1.cols) == (2, 3)
    assert pod.tiles == 120 and (pod.rows, pod.cols) == (4, 30)


def test_shapes_prefer_square_and_exact() -> None:
    assert shapes(4, 4, 30)[0] == (2, 2)
    assert shapes(6, 2, 3) == ((2, 3),)
    assert shapes(5, 2, 3) == ((2, 3),)   # no 5-tile rectangle on 2 x 3: the whole tray
    assert shapes(7, 2, 3) == ()


def test_gang_allocation_is_all_or_nothing_and_contiguous() -> None:
    # One tile of six busy: a 6-tile job cannot start; a 2-tile job gets two adjacent tiles.
    busy = [running("r", [(0, 1)], 100.0)]
    d = schedule(Queue((Pending("big", "a", 6, 50.0),), tuple(busy)), V1, 0.0)
    assert d.starts == ()
    d = schedule(Queue((Pending("two", "a", 2, 50.0),), tuple(busy)), V1, 0.0)
    (s,) = d.starts
    (r0, c0), (r1, c1) = sorted(s.cells)
    assert abs(r0 - r1) + abs(c0 - c1) == 1 and (0, 1) not in s.cells


def test_backfill_never_delays_the_reservation() -> None:
    # 4 tiles busy until t=100. Head wants all 6 -> reserved at t=100. A 2-tile job of limit 50
    # ends before that and may start; one of limit 500 would hold the head's tiles: it waits.
    busy = (running("r", [(0, 0), (0, 1), (1, 0), (1, 1)], 100.0),)
    q = Queue((Pending("head", "a", 6, 50.0, 0.0), Pending("short", "a", 2, 50.0, 1.0),
               Pending("long", "a", 2, 500.0, 2.0)), busy)
    d = schedule(q, V1, 0.0)
    assert [s.job for s in d.starts] == ["short"]
    assert d.reservation is not None and d.reservation.job == "head"
    assert d.reservation.at_s == 100.0
    # Plain FIFO starts nothing behind a head that waits.
    assert schedule(q, V1, 0.0, FIFO).starts == ()


def test_priority_preempts_lower_priority() -> None:
    low = (running("low", [(r, c) for r in range(2) for c in range(3)], 1e6, prio=0),)
    q = Queue((Pending("urgent", "b", 6, 10.0, 5.0, priority=1),), low)
    d = schedule(q, V1, 10.0)
    assert d.preempt == ("low",) and d.reservation is not None
    assert d.reservation.job == "urgent" and d.reservation.at_s == 10.0
    # Same priority: nothing is preempted.
    same = Queue((Pending("peer", "b", 6, 10.0, 5.0, priority=0),), low)
    assert schedule(same, V1, 10.0).preempt == ()


def test_fair_share_serves_the_underserved_tenant_first() -> None:
    # Equal quotas; tenant a used 10x more lately. One free tile: b's later job goes first.
    busy = (running("r", [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)], 1e6),)
    q = Queue((Pending("a1", "a", 1, 10.0, 0.0), Pending("b1", "b", 1, 10.0, 1.0)), busy,
              usage={"a": 1000.0, "b": 100.0}, weights={"a": 1.0, "b": 1.0})
    assert [s.job for s in schedule(q, V1, 2.0).starts] == ["b1"]
    # Weighted by quota: with a's quota 20x b's, a is the one under its share.
    q2 = Queue(q.pending, busy, usage=q.usage, weights={"a": 20.0, "b": 1.0})
    assert [s.job for s in schedule(q2, V1, 2.0).starts] == ["a1"]


def test_largest_free_rectangle() -> None:
    g = Grid(Machine(4, 30))
    assert g.largest_free_rect() == 120
    g.set(Rect(0, 10, 4, 1).cells(), "x")   # a wall at column 10: 4 x 19 on the right
    assert g.largest_free_rect() == 76


jobs = st.lists(st.tuples(st.integers(1, 6), st.floats(1, 100), st.integers(0, 1)), max_size=8)


@settings(max_examples=40, deadline=None)
@given(jobs, st.integers(0, 5))
def test_decisions_never_double_book(spec: list[tuple[int, float, int]], busy: int) -> None:
    held = tuple(running(f"r{i}", [divmod(i, 3)], 50.0 + i) for i in range(busy))
    q = Queue(tuple(Pending(f"p{i}", "ab"[i % 2], t, lim, float(i), pr)
                    for i, (t, lim, pr) in enumerate(spec)), held)
    for policy in (Policy(), FIFO, SCATTER):
        d = schedule(q, V1, 0.0, policy)
        assert d == schedule(q, V1, 0.0, policy)  # pure: same inputs, same decisions
        taken = {c for r in held if r.id not in d.preempt for c in r.cells}
        for s in d.starts:
            assert not taken & set(s.cells) and all(0 <= r < 2 and 0 <= c < 3 for r, c in s.cells)
            taken |= set(s.cells)


def test_small_trace_dojo_beats_fifo_and_starves_nobody() -> None:
    pod = Machine(4, 30, "exapod")
    trace = synthetic_trace(300, pod, seed=3)
    ours, fifo = replay(trace, pod, name="dojo"), replay(trace, pod, FIFO, name="fifo")
    scatter = replay(trace, pod, SCATTER, name="scatter")
    assert ours.utilisation > fifo.utilisation
    assert max(ours.wait_mean_s.values()) < max(fifo.wait_mean_s.values())
    assert ours.non_rectangular == 0.0 < scatter.non_rectangular
    assert 0.0 < ours.utilisation <= 1.0 and 0.0 <= ours.fragmentation < 1.0
