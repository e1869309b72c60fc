"""The CPU closed loop's waits between ranks measured in lockstep (eleventh and fourteenth
rounds): a blocking wait on another rank costs the step's wall a fixed part, the slower work
after it (`wait_resume_s`) and the later rank's drift, `lockstep_jitter` x sqrt(the rank's work
since its previous wait)
(`dojo.sim.eager.wait_time`, docs/simulator.md). Each expected value is the closed form of the
mechanism, from the calibration's fields."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
from bench_module import load_bench

from dojo.runtime import Job
from dojo.runtime.job import simulate_job

NO_HOST = {"tp_region_s": 0.0, "p2p_post_s": 0.0, "wait_resume_s": 0.0, "lockstep_wait_s": 0.0,
           "lockstep_jitter": 0.0, "lockstep_wake_s": 0.0, "tp_vocab_embedding_s": 0.0,
           "tp_vocab_loss_s": 0.0}
WAIT, JITTER = 300e-6, 7e-3  # s, s^0.5: 221 us of drift after 1 ms of work


def _devices(plan: str, **fields: float) -> tuple[Any, Any, Any]:
    """(gpt's small preset's program under `plan`, the cpu device with no multi-rank host
    fields, the same with `fields`)."""
    from dojo.sim.simulate import device_model

    program = simulate_job(Job(model="gpt", plan=f"{plan},precision=fp32", system="cpu")).program
    dev = device_model(program)
    zero = replace(dev, calibration=replace(dev.calibration, **NO_HOST))
    return program, zero, replace(dev, calibration=replace(zero.calibration, **fields))


def test_a_wait_costs_its_fixed_part_and_the_drift_of_the_work_before_it() -> None:
    """wait_time = wait_resume_s + lockstep_wait_s + lockstep_jitter x sqrt(work): the work
    after the wait resumes slower, and quadrupling the work before it doubles the drift;
    without lockstep figures `wait_resume_s` alone; nothing off an eager device."""
    from dojo.sim.eager import wait_time

    resume = 50e-6
    _, _, dev = _devices("dp=2", lockstep_wait_s=WAIT, lockstep_jitter=JITTER,
                         wait_resume_s=resume)
    fixed = WAIT + resume
    assert wait_time(dev, 0.0) == pytest.approx(fixed, rel=1e-12)
    assert wait_time(dev, 1e-3) == pytest.approx(fixed + JITTER * math.sqrt(1e-3), rel=1e-12)
    assert (wait_time(dev, 4e-3) - fixed) == pytest.approx(2 * (wait_time(dev, 1e-3) - fixed),
                                                           rel=1e-12)
    old = replace(dev, calibration=replace(dev.calibration, lockstep_wait_s=0.0,
                                           lockstep_jitter=0.0))
    assert wait_time(old, 1e-3) == pytest.approx(50e-6, rel=1e-12)
    assert wait_time(replace(dev, calibration=replace(dev.calibration, eager=False)), 1.0) == 0.0


def test_tp_collectives_wait_for_the_drift_of_the_work_between_them() -> None:
    """A tp phase of n collectives, r of them f/g regions, and ops taking t: r tp_region_s +
    n (lockstep_wait_s + jitter sqrt((t + r tp_region_s) / n)), the work spread evenly
    between the collectives. gpt's forward has 3 collectives of its vocabulary-parallel
    embedding and loss (one all-reduce and two, docs/runtime.md), which are no f/g regions."""
    from dojo.sim.memory import device_memory
    from dojo.sim.simulate import chunk_times

    region = 20e-6
    program, zero, dev = _devices("tp=2", tp_region_s=region, lockstep_wait_s=WAIT,
                                  lockstep_jitter=JITTER)
    memory = device_memory(program)
    for chunk in program.chunks:
        base = chunk_times(program, chunk, zero, memory)
        now = chunk_times(program, chunk, dev, memory)
        for comms, work, extra, before in (
                (chunk.tp_forward, base.forward, now.tp_forward, base.tp_forward),
                (chunk.tp_backward, base.backward, now.tp_backward, base.tp_backward)):
            n = len(comms)
            r = n - 3 if comms is chunk.tp_forward else n
            assert n
            drift = JITTER * math.sqrt((work + r * region) / n)
            assert extra - before == pytest.approx(r * region + n * (WAIT + drift), rel=1e-9)


def test_the_step_collectives_wait_after_the_passes_and_the_update(monkeypatch: Any) -> None:
    """dp=2: the gradient all-reduce waits after the stage's forward and backward tasks (its
    busy time in the simulated spans), the loss all-reduce after the update (u): each update
    span is u + K + j (sqrt(busy) + sqrt(u)), K the sync's host time with no jitter
    (`sync_host_time` at jitter 0)."""
    import importlib

    from dojo.sim.eager import sync_host_time

    simulate_module = importlib.import_module("dojo.sim.simulate")  # the name is a function

    program, _, dev = _devices("dp=2", lockstep_wait_s=WAIT, lockstep_jitter=0.0)
    spans = {}
    for jitter in (0.0, 2e-3, 5e-3):
        d = replace(dev, calibration=replace(dev.calibration, lockstep_jitter=jitter))
        monkeypatch.setattr(simulate_module, "device_model", lambda _, d=d: d)
        result = simulate_module.simulate(program)
        spans[jitter] = result.optimizer_spans[0][2] - result.optimizer_spans[0][1]
        busy = sum(s.end - s.start for s in result.spans if s.stage == 0)
    params = program.work.param_count / program.plan.tp
    fixed = sync_host_time(program, dev, 0, params, 0.0, 0.0)
    update = spans[0.0] - fixed - dev.calibration.step_overhead_s
    for jitter in (2e-3, 5e-3):
        assert spans[jitter] - spans[0.0] == pytest.approx(
            jitter * (math.sqrt(busy) + math.sqrt(update)), rel=1e-6)


def test_pipeline_receives_wait_the_fixed_part_only() -> None:
    """pp=2: a receive costs lockstep_wait_s and no drift (the pipeline's schedule already has
    the receiver wait for the sender's task), and the task after it its slower resume
    (`wait_resume_s`); a send its posting."""
    from dojo.sim.memory import device_memory
    from dojo.sim.simulate import chunk_times, task_durations

    post = 20e-6
    program, zero, dev = _devices("pp=2", p2p_post_s=post, lockstep_wait_s=WAIT,
                                  lockstep_jitter=JITTER)
    memory = device_memory(program)
    times = {c.index: chunk_times(program, c, zero, memory) for c in program.chunks}
    f0, b0, _ = task_durations(program, zero, times)
    f1, b1, _ = task_durations(program, dev, times)
    assert [a - b for a, b in zip(f1, f0)] == pytest.approx([post, WAIT], rel=1e-9)
    assert [a - b for a, b in zip(b1, b0)] == pytest.approx([WAIT, post], rel=1e-9)
    resume = 40e-6  # the task after a receive resumes slower: each receive pays it too
    _, _, slow = _devices("pp=2", p2p_post_s=post, lockstep_wait_s=WAIT, lockstep_jitter=JITTER,
                          wait_resume_s=resume)
    f2, b2, _ = task_durations(program, slow, times)
    assert [a - b for a, b in zip(f2, f1)] == pytest.approx([0.0, resume], rel=1e-9, abs=1e-15)
    assert [a - b for a, b in zip(b2, b1)] == pytest.approx([resume, 0.0], rel=1e-9, abs=1e-15)


def test_the_lockstep_fit_recovers_a_known_wait_wake_and_jitter() -> None:
    """bench/rank_costs.fit_lockstep on points of a known closed form, excess(work) = a +
    (k + j sqrt(work) where work > 0) beyond the work, returns (a, j, k); with no wake-up the
    line goes through the origin; with no work between at all, neither; the slower resume r
    that every point with work pays comes off."""
    fit = load_bench("rank_costs").fit_lockstep
    a, j, k = 330e-6, 2.4e-3, 90e-6
    works = [0.0, 0.4e-3, 0.8e-3, 1.7e-3, 3.4e-3, 6.8e-3]
    points = [(w, w + a + (k if w else 0.0) + j * math.sqrt(w)) for w in works]
    assert fit(points) == pytest.approx((a, j, k), rel=1e-9)
    plain = [(w, w + a + j * math.sqrt(w)) for w in works]
    assert fit(plain) == pytest.approx((a, j, 0.0), rel=1e-9, abs=1e-12)
    assert fit(points[:1]) == pytest.approx((a, 0.0, 0.0), rel=1e-9)
    r = 110e-6
    resumed = [(w, w + a + (r + k if w else 0.0) + j * math.sqrt(w)) for w in works]
    assert fit(resumed, r) == pytest.approx((a, j, k), rel=1e-9)
    # excess that falls with work (noise): no drift, the mean step
    flat = [(0.0, a), (1e-3, 1e-3 + a + 2 * k), (4e-3, 4e-3 + a + k)]
    assert fit(flat) == pytest.approx((a, 0.0, 1.5 * k), rel=1e-9)


def test_a_wait_after_work_wakes_its_sleeper() -> None:
    """`lockstep_wake_s` is paid by a wait after any work, not by back-to-back collectives."""
    from dojo.sim.eager import wait_time

    _, _, dev = _devices("dp=2", lockstep_wait_s=WAIT, lockstep_jitter=JITTER,
                         lockstep_wake_s=80e-6)
    assert wait_time(dev, 0.0) == pytest.approx(WAIT, rel=1e-12)
    assert wait_time(dev, 1e-3) == pytest.approx(WAIT + 80e-6 + JITTER * math.sqrt(1e-3),
                                                 rel=1e-12)


def test_a_lockstep_window_spans_about_one_step_of_the_loop(monkeypatch: Any) -> None:
    """bench/rank_costs.window_iterations: round(window / the work's fastest run), from 1 to
    the cap, the work timed on a clock that it advances by known amounts (the first run slow,
    as a cold one is)."""
    rank_costs = load_bench("rank_costs")
    clock = [0.0]
    monkeypatch.setattr(rank_costs.time, "perf_counter", lambda: clock[0])

    def work_of(seconds: float) -> Any:
        runs = iter([3 * seconds] + [seconds] * 10)
        return lambda: clock.__setitem__(0, clock[0] + next(runs))

    assert rank_costs.window_iterations(work_of(0.45e-3), 0.010) == 20  # 22 capped at 20
    assert rank_costs.window_iterations(work_of(0.45e-3), 0.010, most=40) == 22
    assert rank_costs.window_iterations(work_of(2.6e-3), 0.010) == 4
    assert rank_costs.window_iterations(work_of(12e-3), 0.010) == 1
    assert rank_costs.window_iterations(work_of(0.0), 0.010) == 20
