"""`vp_group`: micro-batch groups of the interleaved schedule (Megatron-Core's
microbatch_group_size_per_vp_stage, Llama 3's tunable N; issue 11 item 6). References: the
order Megatron-Core's `get_schedule_table` and `get_pp_rank_microbatches` give (rebuilt here
from their definitions), Narayanan et al. 2021's bubble (pp - 1) / (V m), and the closed-form
warm phase of `dojo.sim.pipeline`'s docstring for N < pp."""

from __future__ import annotations

import random

import pytest

from dojo.cli.main import main
from dojo.plan import parse_plan
from dojo.plan.plan import ring_spread
from dojo.sim.memory import peak_in_flight
from dojo.sim.pipeline import order, run_pipeline, simulate_pipeline


def megatron_order(stage: int, pp: int, micro: int, virtual: int, n: int
                   ) -> list[tuple[str, int, int]]:
    """Megatron-Core's interleaved 1F1B order for N >= pp: the schedule table (groups of N
    micro-batches, each through every chunk; the last group whatever is left), warm-up
    2 (pp - 1 - rank) + (V - 1) N forwards, then one forward and one backward at a time; a
    backward takes the table's entries in order with the chunk reversed."""
    table = []
    for start in range(0, micro, n):
        stop = micro if start + n >= micro else start + n
        table += [(m, c) for c in range(virtual) for m in range(start, stop)]
        if stop == micro:
            break
    total = micro * virtual
    warm = min(2 * (pp - 1 - stage) + (virtual - 1) * n, total)
    fwd = [("F", m, c) for m, c in table]
    bwd = [("B", m, virtual - 1 - c) for m, c in table]
    out = fwd[:warm]
    for i in range(total - warm):
        out += [fwd[warm + i], bwd[i]]
    return out + bwd[total - warm:]


def in_flight_units(stage: int, pp: int, micro: int, virtual: int, n: int) -> int:
    """Most units (one micro-batch of one chunk) a stage holds, counted along its order."""
    live = peak = 0
    for kind, _, _ in order("interleaved", stage, pp, micro, virtual, n):
        live += 1 if kind == "F" else -1
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize(("pp", "virtual"), [(2, 2), (3, 2), (4, 2), (4, 3), (5, 4)])
def test_groups_of_pp_or_more_are_megatrons_order(pp: int, virtual: int) -> None:
    """N = pp (the default, 0) is the order the simulator ran before `vp_group` existed (the
    same table), and every N >= pp with a last group of 0 or >= pp micro-batches (Megatron-Core's
    own rule) is Megatron-Core's order."""
    for micro in range(pp, 4 * pp + 1):
        for n in range(pp, micro + 1):
            if micro % n and micro % n < pp:
                continue
            for s in range(pp):
                want = megatron_order(s, pp, micro, virtual, n)
                assert order("interleaved", s, pp, micro, virtual, n) == want, (micro, n, s)
                if n == pp and micro % pp == 0:
                    assert order("interleaved", s, pp, micro, virtual) == want


@pytest.mark.parametrize(("pp", "virtual"), [(4, 2), (8, 4), (16, 8), (6, 3)])
def test_in_flight_units_per_stage_in_closed_form(pp: int, virtual: int) -> None:
    """Units held by stage s: Megatron's 2 (pp - 1 - s) + (V - 1) N + 1 for N >= pp; for N < pp
    (V - 1) N + 2 N (pp - 1 - s) // pp + 1 (the spread of 2 per stage scaled to the 2N units a
    ring of groups of N leaves); all M V when the warm phase would pass them. The memory walk
    (`peak_in_flight`, one byte a unit) agrees with the count along the whole order."""
    for n in range(1, 2 * pp + 1):
        micro = 3 * n
        for s in range(pp):
            if n >= pp:
                want = 2 * (pp - 1 - s) + (virtual - 1) * n + 1
            else:
                want = (virtual - 1) * n + 2 * n * (pp - 1 - s) // pp + 1
            want = min(want, micro * virtual)
            assert in_flight_units(s, pp, micro, virtual, n) == want, (n, s)
            saved = [1.0] * (pp * virtual)
            assert peak_in_flight("interleaved", s, pp, micro, virtual, saved, n) == want


def test_llama3_8k_stage_holds_fewer_units_with_a_smaller_group() -> None:
    """pp 16, V 8 (the Llama 3 8K plan): stage 1 holds 141 units with N = pp = 16 (its first
    chunk has one layer fewer, so stage 0 is not the peak), 7 x 11 + 2 x 11 x 14 // 16 + 1 = 97
    with N = 11, 7 x 8 + 14 + 1 = 71 with N = 8."""
    for n, want in ((16, 141), (11, 97), (8, 71)):
        assert in_flight_units(1, 16, 32, 8, n) == want


@pytest.mark.parametrize(("pp", "virtual", "micro", "n"), [
    (4, 2, 8, 4), (4, 2, 12, 6), (4, 3, 12, 6), (4, 2, 10, 5), (8, 4, 16, 8), (8, 4, 24, 12),
    (4, 4, 9, 9), (3, 2, 12, 4), (5, 2, 14, 7)])
def test_whole_groups_of_pp_or_more_have_narayanans_bubble(pp: int, virtual: int, micro: int,
                                                           n: int) -> None:
    """Equal chunks, no transfer: the step is (m V + pp - 1)(F + B), the bubble (pp - 1) / (V m)
    of Narayanan et al. 2021, for every N >= pp that divides m."""
    spans = run_pipeline(pp, virtual, micro, "interleaved",
                         lambda s, t: 1.0 if t[0] == "F" else 2.0, 0.0, group=n)
    assert max(s.end for s in spans) == pytest.approx((micro * virtual + pp - 1) * 3.0)


def test_groups_smaller_than_pp_stall_the_ring() -> None:
    """pp 16, V 8, B = 2 F (no recompute): a micro-batch's backward of one chunk crosses the 16
    stages before the next chunk's, and stage 0 gives it only N (F + B) of other work: with N = 8
    it waits (the step exceeds the bubble-only (m V + pp - 1)(F + B)), with N = 16 it does not."""
    def step(n: int) -> float:
        spans = run_pipeline(16, 8, 32, "interleaved", lambda s, t: 1.0 if t[0] == "F"
                             else 2.0, 0.0, group=n)
        return max(s.end for s in spans)

    ideal = (32 * 8 + 15) * 3.0
    assert step(16) == pytest.approx(ideal)
    assert step(8) > 1.3 * ideal


@pytest.mark.parametrize("virtual", [2, 3])
def test_accepted_groups_run_and_refused_ones_deadlock(virtual: int) -> None:
    """A last group of r = m mod N micro-batches with r + N >= the warm spread runs to the end;
    with V = 3 every refused one is a real cycle (the order deadlocks). (With V = 2 a few refused
    ones happen to run: the rule is the cycle's condition, sufficient everywhere.)"""
    for pp in range(2, 7):
        for micro in range(1, 3 * pp + 1):
            for n in range(1, micro + 1):
                left = micro % n
                ok = not left or left + n >= ring_spread(pp, n)
                try:
                    run_pipeline(pp, virtual, micro, "interleaved",
                                 lambda s, t: 1.0 if t[0] == "F" else 2.0, 0.1, group=n)
                    ran = True
                except RuntimeError:
                    ran = False
                if ok:
                    assert ran, (pp, micro, n)
                elif virtual == 3:
                    assert not ran, (pp, micro, n)


@pytest.mark.parametrize(("pp", "virtual", "n"), [(4, 2, 2), (4, 2, 3), (4, 3, 6), (3, 2, 5)])
def test_jumping_the_steady_state_with_groups_equals_the_direct_run(pp: int, virtual: int,
                                                                    n: int) -> None:
    """Unequal chunk times and transfers: the run that jumps over repeated periods of N
    micro-batches ends every device when the task-by-task run does, last groups of every size
    included."""
    rng = random.Random(pp * 100 + virtual * 10 + n)
    f = [rng.uniform(0.3, 2.0) for _ in range(pp * virtual)]
    b = [rng.uniform(0.5, 4.0) for _ in range(pp * virtual)]

    def duration(stage: int, task: tuple[str, int, int]) -> float:
        return (f if task[0] == "F" else b)[task[2] * pp + stage]

    jumped = 0
    for micro in range(n, 97):
        left = micro % n
        if left and left + n < ring_spread(pp, n):
            continue
        direct, _ = simulate_pipeline(pp, virtual, micro, "interleaved", duration, 0.07,
                                      explicit=10**9, group=n)
        fast, skipped = simulate_pipeline(pp, virtual, micro, "interleaved", duration, 0.07,
                                          explicit=0, group=n)
        jumped += skipped > 0
        for stage in range(pp):
            want = max(s.end for s in direct if s.stage == stage)
            got = max(s.end for s in fast if s.stage == stage)
            assert got == pytest.approx(want, rel=1e-9), (micro, stage)
    assert jumped >= 5


def test_memory_walk_with_groups_equals_the_whole_order() -> None:
    """Unequal chunks: the bounded walk of `peak_in_flight` equals the walk of the whole order
    for groups that divide m and for uneven last groups (walked whole)."""
    rng = random.Random(7)
    pp, virtual = 4, 3
    saved = [rng.uniform(0.0, 5.0) for _ in range(pp * virtual)]
    for n in (2, 3, 5, 6):
        for micro in range(n, 61):
            if micro % n and micro % n + n < ring_spread(pp, n):
                continue
            for s in range(pp):
                live = peak = 0.0
                for kind, _, c in order("interleaved", s, pp, micro, virtual, n):
                    live += saved[c * pp + s] if kind == "F" else -saved[c * pp + s]
                    peak = max(peak, live)
                got = peak_in_flight("interleaved", s, pp, micro, virtual, saved, n)
                assert got == pytest.approx(peak, rel=1e-12), (n, micro, s)


SETS = ["--set", "layers=16", "--set", "hidden=128", "--set", "heads=4", "--set", "ffn=512",
        "--set", "vocab=1024", "--set", "seq=128"]


@pytest.mark.parametrize(("plan", "batch", "needle"), [
    ("pp=2,interleave=2,vp_group=9", 8,
     "field 'vp_group' = 9: expected at most the micro-batches per pipeline: batch / "
     "(dp 1 x mb 1) = 8"),
    ("pp=2,vp_group=2", 8, "field 'vp_group' = 2: expected 0 (unset) with interleave=1"),
    ("pp=2,interleave=2,vp_group=-1", 8, "field 'vp_group' = -1: expected a number >= 0"),
    ("pp=2,interleave=2,vp_group=2.5", 8, "field 'vp_group' = 2.5: expected an integer"),
    ("pp=8,interleave=2,vp_group=4", 9,
     "9 = 2 x 4 + 1, and a last group of 1 deadlocks the pipeline (1 + N 4 < the warm spread "
     "2 min(N, pp) (pp - 1) // pp = 7)"),
])
def test_bad_groups_are_one_line_with_the_arithmetic(capsys: pytest.CaptureFixture[str],
                                                     plan: str, batch: int,
                                                     needle: str) -> None:
    code = main(["simulate", "gpt", *SETS, "--system", "a100-cluster:8", "--plan",
                 f"dp=1,{plan}", "--batch", str(batch)])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1, err


def test_the_plan_text_shows_a_group_only_when_set() -> None:
    assert "vp_group" not in parse_plan("pp=2,interleave=2").text()
    assert "vp_group=3" in parse_plan("pp=2,interleave=2,vp_group=3").text()
    assert parse_plan(parse_plan("pp=2,interleave=2,vp_group=3").text()).vp_group == 3
