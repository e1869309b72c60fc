"""Pipeline schedules against the closed forms of Narayanan et al. (SC'21) and the event core."""

from __future__ import annotations

import pytest

from dojo.sim.engine import Engine
from dojo.sim.pipeline import order, run_pipeline


def _uniform(f: float, b: float):  # type: ignore[no-untyped-def]
    return lambda stage, task: f if task[0] == "F" else b


@pytest.mark.parametrize(("pp", "m"), [(1, 4), (4, 8), (8, 8), (4, 32)])
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_makespan_is_m_plus_p_minus_1_steps(schedule: str, pp: int, m: int) -> None:
    f, b = 1.0, 2.0
    spans = run_pipeline(pp, 1, m, schedule, _uniform(f, b), 0.0)
    assert max(s.end for s in spans) == pytest.approx((m + pp - 1) * (f + b))


@pytest.mark.parametrize(("pp", "v", "m"), [(4, 2, 8), (4, 4, 16), (8, 2, 16)])
def test_interleaving_divides_the_bubble_by_v(pp: int, v: int, m: int) -> None:
    # Each chunk carries 1/v of a stage's work; bubble (pp - 1) / v of a stage-step.
    f, b = 1.0 / v, 2.0 / v
    spans = run_pipeline(pp, v, m, "interleaved", _uniform(f, b), 0.0)
    assert max(s.end for s in spans) == pytest.approx((m + (pp - 1) / v) * 3.0)


@pytest.mark.parametrize("m", [1, 2])
def test_transfers_delay_the_fill(m: int) -> None:
    pp, t = 4, 0.25
    spans = run_pipeline(pp, 1, m, "1f1b", _uniform(1.0, 2.0), t)
    # With few micro-batches the critical path is the fill and the drain: 2 (pp - 1) crossings.
    assert max(s.end for s in spans) == pytest.approx((m + pp - 1) * 3.0 + 2 * (pp - 1) * t)
    # With many, steady-state steps wait on transfers too: never less than that.
    many = run_pipeline(pp, 1, 16, "1f1b", _uniform(1.0, 2.0), t)
    assert max(s.end for s in many) >= (16 + pp - 1) * 3.0 + 2 * (pp - 1) * t


def test_1f1b_keeps_at_most_pp_minus_stage_in_flight() -> None:
    pp, m = 4, 12
    for stage in range(pp):
        live = peak = 0
        for kind, _, _ in order("1f1b", stage, pp, m, 1):
            live += 1 if kind == "F" else -1
            peak = max(peak, live)
        assert peak == pp - stage
    gpipe = order("gpipe", 0, pp, m, 1)
    assert [k for k, _, _ in gpipe[:m]] == ["F"] * m


def test_engine_orders_ties_by_scheduling_order() -> None:
    engine = Engine()
    seen: list[str] = []
    engine.at(1.0, lambda: seen.append("b"))
    engine.at(0.5, lambda: seen.append("a"))
    engine.at(1.0, lambda: seen.append("c"))
    engine.at(1.0, lambda: engine.at(1.0, lambda: seen.append("e")))
    engine.at(1.0, lambda: seen.append("d"))
    assert engine.run() == 1.0
    assert seen == ["a", "b", "c", "d", "e"]
