"""The plan search's memory bounds against the full computation on random small plans: the
activations-in-flight bound of a family (`stagemem.least_in_flight`) below the schedule walk
(`memory.peak_in_flight`) of every micro-batch size, schedule and recompute it stands for."""

from __future__ import annotations

import random

import pytest

from dojo.sim.memory import peak_in_flight
from dojo.sim.stagemem import least_in_flight


def _saved(split: list[int], sections: tuple[float, float, float]) -> list[float]:
    """Bytes per virtual stage: embedding side on the first, head side on the last."""
    last = len(split) - 1
    return [sections[0] * (v == 0) + sections[1] * n + sections[2] * (v == last)
            for v, n in enumerate(split)]


def test_least_in_flight_is_below_every_schedule_walk() -> None:
    """2,000 random (pp, interleave, split, samples per replica, affine saved bytes): the bound,
    from the least bytes of a micro-batch and of a sample over every mb, stays below the peak
    the walk finds for every mb dividing the samples and every schedule. Saved bytes per
    section are affine in mb (c + k mb, c >= 0 as captures give), the bounds taken as
    `stagemem.saved_lows` does: per micro-batch the value at mb = 1, per sample the slope."""
    rng = random.Random(11)
    tight = 0
    for _ in range(2000):
        pp, interleave = rng.randint(1, 5), rng.randint(1, 3)
        split = [rng.randint(0, 3) for _ in range(pp * interleave)]
        samples = rng.choice([1, 2, 6, 12, 24, 60])
        const = (rng.choice([0.0, 3.0]), rng.uniform(0, 5), rng.uniform(0, 5))
        slope = (rng.uniform(0, 10), rng.uniform(0, 10), rng.uniform(0, 10))
        per_micro = (const[0] + slope[0], const[1] + slope[1], const[2] + slope[2])
        least = least_in_flight(split, pp, interleave, per_micro, slope, samples)
        for mb in (d for d in range(1, samples + 1) if samples % d == 0):
            saved = _saved(split, (const[0] + slope[0] * mb, const[1] + slope[1] * mb,
                                   const[2] + slope[2] * mb))
            micro = samples // mb
            for schedule in ("1f1b", "gpipe"):
                if schedule == "1f1b" and interleave > 1 and micro % pp:
                    continue   # `validate_plan` refuses it
                for s in range(pp):
                    peak = peak_in_flight(schedule, s, pp, micro, interleave, saved)
                    assert least[s] <= peak * (1 + 1e-12) + 1e-9, (pp, interleave, split, mb, s)
                    tight += least[s] > 0.99 * peak > 0
    assert tight > 100   # the bound is reached, not only below


MOE = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "ffn": 128, "expert_ffn": 96,
       "experts": 8, "top_k": 2, "seq": 32, "vocab": 256}


def test_group_and_stream_bounds_never_exceed_the_simulated_step() -> None:
    """The bounds the search takes per group (`groups`' floor, `group_bound`, the per-mb
    memory screen) and per plan (`_first_bound` with ZeRO 3's stream) for every plan of a small
    MoE space on 4 H100s, against each plan compiled and simulated: below its step and its
    bytes; the stream is the simulator's own (`simulate.chunk_times`) for every ZeRO 3 plan."""
    from dojo.compiler.mapping import device_count
    from dojo.hardware import load_system
    from dojo.sim import session
    from dojo.sim.memory import device_memory
    from dojo.sim.search import _Screen, plan_space
    from dojo.sim.session import compile_model, model_shape
    from dojo.sim.simulate import chunk_times, device_model, simulate

    spec, batch = load_system("h100-cluster:4"), 8
    shape = model_shape(*session.captured("moe", MOE, 1, None))
    screen = _Screen("moe", MOE, spec, batch, None)
    checked = streamed = 0
    for plan in plan_space(shape, device_count(spec), batch, spec=spec):
        program, _ = compile_model("moe", MOE, spec, plan, batch, derive=True)
        memory = device_memory(program)
        step = simulate(program).step_time_s
        group = plan.__class__(dp=plan.dp, tp=plan.tp, pp=plan.pp, cp=plan.cp, mb=plan.mb,
                               interleave=plan.interleave, stages=plan.stages)
        family = group.__class__(**{**group.__dict__, "zero": 3 if plan.dp > 1 else 0})
        floor = batch // (plan.dp * plan.mb) * screen._stream_floor(family)
        assert screen._first_bound(plan) <= step * (1 + 1e-12), plan.text()
        if memory.fits:
            assert floor <= step * (1 + 1e-12), plan.text()
            assert screen.group_bound(group, shape, 4) <= step * (1 + 1e-12), plan.text()
        assert max(screen._family_bytes(family, plan.mb)) <= memory.total * (1 + 1e-12), \
            plan.text()
        if plan.zero == 3:
            dev = device_model(program)
            want = [chunk_times(program, c, dev, memory).stream for c in program.chunks]
            assert screen._stream(plan) == pytest.approx(want, rel=1e-12), plan.text()
            streamed += any(w > 0 for w in want)
        checked += 1
    assert checked >= 100 and streamed >= 10


def test_stream_floor_holds_where_only_zero_3_fits() -> None:
    """With a capacity between the ZeRO 3 and ZeRO 2 states (a screen's capacity set to the
    median ZeRO 3 state of the space), the stream floor is positive for some families and
    stays below the simulated step of every plan whose state fits that capacity."""
    from dojo.hardware import load_system
    from dojo.sim import session
    from dojo.sim.search import _Screen, plan_space
    from dojo.sim.session import compile_model, model_shape
    from dojo.sim.simulate import simulate

    spec, batch = load_system("h100-cluster:4"), 8
    shape = model_shape(*session.captured("moe", MOE, 1, None))
    screen = _Screen("moe", MOE, spec, batch, None)
    space = [p for p in plan_space(shape, 4, batch, spec=spec) if p.dp > 1]
    states = sorted(max(screen._stage_state(p)) for p in space if p.zero == 3)
    screen.capacity = states[len(states) // 2]
    positive = 0
    for plan in space:
        if max(screen._stage_state(plan)) > screen.capacity:
            continue
        family = plan.__class__(dp=plan.dp, tp=plan.tp, pp=plan.pp, cp=plan.cp, zero=3,
                                interleave=plan.interleave, stages=plan.stages)
        floor = batch // (plan.dp * plan.mb) * screen._stream_floor(family)
        program, _ = compile_model("moe", MOE, spec, plan, batch, derive=True)
        assert floor <= simulate(program).step_time_s * (1 + 1e-12), plan.text()
        positive += floor > 0
    assert positive >= 10
