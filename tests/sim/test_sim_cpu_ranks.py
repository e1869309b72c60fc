"""The CPU closed loop with more than one rank (fourth round): what the eager runtime's ranks
do that the simulation must follow."""

from __future__ import annotations

from typing import Any

import pytest
from bench_module import load_bench

from dojo.runtime import Job
from dojo.runtime.job import simulate_job


def test_eager_gradient_sync_follows_the_last_backward_whatever_the_plans_overlap() -> None:
    """The runtime reduces the gradients in one flat all-reduce after the step's last backward
    (`Trainer._sync_gradients`), so on the eager cpu device the sync starts when the last
    backward ends, overlap on or off; a GPU system still overlaps it bucket by bucket."""
    on = simulate_job(Job(model="gpt", plan="dp=2,precision=fp32", system="cpu")).result
    off = simulate_job(Job(model="gpt", plan="dp=2,precision=fp32,overlap=off",
                           system="cpu")).result
    last_backward = max(s.end for s in on.spans if s.kind == "B")
    assert on.sync_spans[0][1] == pytest.approx(last_backward, rel=1e-12)
    assert on.step_time_s == pytest.approx(off.step_time_s, rel=1e-12)
    gpu = "a100-cluster:2"
    gpu_on = simulate_job(Job(model="gpt", plan="dp=2", system=gpu)).result
    gpu_off = simulate_job(Job(model="gpt", plan="dp=2,overlap=off", system=gpu)).result
    assert gpu_on.sync_spans[0][1] < max(s.end for s in gpu_on.spans if s.kind == "B")
    assert gpu_on.step_time_s < gpu_off.step_time_s


def _late_rank(rank: int, world: int, delay: float, n: int) -> tuple[float, int]:
    """(CPU seconds, involuntary switches) of this rank's gloo tcp loop thread over `n`
    4-element all-reduces, rank 1 sleeping `delay` s before each (it is late); the loop at
    the default scheduling policy (the launcher puts it at SCHED_IDLE where the ranks fill
    the cores, `dojo.runtime.gloothreads`)."""
    import os
    import time

    import torch
    import torch.distributed as dist

    def loop_thread() -> tuple[float, int]:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() != "gloo_tcp_loop":
                    continue
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                run = int(f.read().split()[0]) / 1e9
            with open(f"/proc/self/task/{tid}/status") as f:
                switches = int(next(line.split()[1] for line in f
                                    if line.startswith("nonvoluntary_ctxt_switches")))
            return run, switches
        return 0.0, 0

    from dojo.runtime.gloothreads import idle_loop_threads

    buf = torch.ones(4)
    dist.all_reduce(buf)
    idle_loop_threads(False)
    dist.barrier()
    run0, sw0 = loop_thread()
    for _ in range(n):
        if rank == 1:
            time.sleep(delay)
        dist.all_reduce(buf)
    run1, sw1 = loop_thread()
    return run1 - run0, sw1 - sw0


@pytest.mark.slow
def test_gloos_loop_threads_spend_cpu_while_their_ranks_wait() -> None:
    """Why a rank's process CPU exceeds its work with more than one rank (an independent
    measurement, /proc's scheduler statistics): while the ranks wait on each other, gloo's tcp
    loop thread of each runs on the CPU (it returns from `epoll_wait` over and over while a
    transfer is under way: docs/benchmarks.md, fourteenth round), CPU that the process's time
    holds and the stepping thread's does not; so `step_thread_cpu_s` is the measure of the
    work. Measured over 40 waits of >= 5 ms: 12-17 ms a rank on a Xeon VM (2026-11-30). The
    fourth round's finding that only the late rank's thread runs (over 3x the early's) did not
    reproduce on the EPYC of the fourteenth round nor here (early 12.5 ms, late 17.2)."""
    from dojo.runtime.launch import launch

    early, late = launch(_late_rank, 2, (0.005, 40), timeout_s=120)
    assert early[0] > 0.005 and late[0] > 0.005, (early, late)


@pytest.mark.slow
def test_a_step_records_its_threads_cpu_beside_the_process() -> None:
    """`run_job` reports the stepping thread's CPU per step (`step_thread_cpu_s`), never more
    than the process's (`step_cpu_s`, all threads), for every step."""
    from dojo.runtime import Job, run_distributed

    _, results = run_distributed(Job(model="mlp", plan="dp=2,precision=fp32", steps=3,
                                     system="cpu"), timeout_s=120)
    for rank in results:
        assert len(rank["step_thread_cpu_s"]) == len(rank["step_cpu_s"]) == 3
        assert all(0 < t <= p + 1e-6 for t, p in zip(rank["step_thread_cpu_s"],
                                                       rank["step_cpu_s"]))


NO_LOCKSTEP = {"lockstep_wait_s": 0.0, "lockstep_jitter": 0.0}


def _program_and_devices(plan: str, **fields: float) -> tuple[Any, Any, Any]:
    """(program, the cpu device with every multi-rank host field 0, the same with `fields`;
    without lockstep figures unless `fields` has them)."""
    from dataclasses import replace

    from dojo.sim.simulate import device_model

    program = simulate_job(Job(model="gpt", plan=f"{plan},precision=fp32", system="cpu")).program
    dev = device_model(program)
    zero = replace(dev, calibration=replace(dev.calibration, tp_region_s=0.0, p2p_post_s=0.0,
                                            wait_resume_s=0.0, **NO_LOCKSTEP))
    return program, zero, replace(dev, calibration=replace(zero.calibration, **fields))


def test_tp_collectives_charge_their_functions_and_the_waits_after_them() -> None:
    """On the eager cpu device every tp collective of a chunk's phase costs the stepping thread
    the resumption after its wait (`wait_resume_s`) beyond the transfer, and each of an f/g
    region its autograd functions and clone (`tp_region_s`): all of them but the forward's 3
    of gpt's vocabulary-parallel embedding and loss (one all-reduce and two)."""
    from dojo.sim.memory import device_memory
    from dojo.sim.simulate import chunk_times

    region, resume = 17e-6, 90e-6
    program, zero, dev = _program_and_devices("tp=2", tp_region_s=region, wait_resume_s=resume)
    memory = device_memory(program)
    for chunk in program.chunks:
        base, now = chunk_times(program, chunk, zero, memory), chunk_times(program, chunk, dev,
                                                                           memory)
        assert len(chunk.tp_forward) and len(chunk.tp_backward)
        assert now.tp_forward - base.tp_forward == pytest.approx(
            (len(chunk.tp_forward) - 3) * region + len(chunk.tp_forward) * resume, rel=1e-9)
        assert now.tp_backward - base.tp_backward == pytest.approx(
            len(chunk.tp_backward) * (region + resume), rel=1e-9)
        assert (now.forward, now.backward) == (base.forward, base.backward)


def test_pipeline_tasks_charge_their_receives_and_sends() -> None:
    """pp=2 on the eager cpu device (`dojo.runtime.pipeline`): stage 0's forward sends its
    activation (`p2p_post_s`), stage 1's receives it (`wait_resume_s`); stage 1's backward
    sends the input gradient, stage 0's receives it."""
    from dojo.sim.memory import device_memory
    from dojo.sim.simulate import chunk_times, task_durations

    post, resume = 20e-6, 150e-6
    program, zero, dev = _program_and_devices("pp=2", p2p_post_s=post, wait_resume_s=resume)
    memory = device_memory(program)
    times = {c.index: chunk_times(program, c, zero, memory) for c in program.chunks}
    f0, b0, t0 = task_durations(program, zero, times)
    f1, b1, t1 = task_durations(program, dev, times)
    assert [a - b for a, b in zip(f1, f0)] == pytest.approx([post, resume], rel=1e-9)
    assert [a - b for a, b in zip(b1, b0)] == pytest.approx([resume, post], rel=1e-9)
    assert t1 == t0


@pytest.mark.parametrize("plan,waits", [("dp=2", 2), ("tp=2", 1), ("pp=2", 2), ("dp=1", 0)])
def test_step_collectives_charge_the_wait_after_them(plan: str, waits: int) -> None:
    """The step's own collectives (`Trainer._sync_gradients`, `_global_loss`) block too: the
    loss all-reduce with more than one rank, the flat gradient all-reduce under dp, and with
    pp > 1 gpt's tied embedding all-reduce between its first and last stage (both of pp=2)."""
    from dojo.sim.eager import sync_host_time

    resume = 120e-6
    program, zero, dev = _program_and_devices(plan, wait_resume_s=resume)
    for stage in range(program.plan.pp):
        assert (sync_host_time(program, dev, stage, 1e5) - sync_host_time(program, zero, stage,
                                                                          1e5)
                == pytest.approx(waits * resume, rel=1e-9, abs=1e-15))


def test_multi_rank_host_fields_charge_nothing_off_an_eager_device() -> None:
    """The fields describe dojo's eager runtime: a compiled GPU step pays none of them."""
    from dataclasses import replace

    from dojo.sim.eager import p2p_host_time, tp_host_time
    from dojo.sim.simulate import device_model

    program = simulate_job(Job(model="gpt", plan="tp=2", system="a100-cluster:2")).program
    dev = device_model(program)
    dev = replace(dev, calibration=replace(dev.calibration, tp_region_s=1.0, p2p_post_s=1.0,
                                           wait_resume_s=1.0))
    assert tp_host_time(program.chunks[0].tp_forward, dev) == 0.0
    assert p2p_host_time(dev, "F", 1, 1) == 0.0


def test_a_fresh_calibration_is_a_system_file_the_simulator_loads(tmp_path: Any) -> None:
    """bench/bench_cpu_loop.py --recalibrate: the figures measured now reach the simulation
    through a system file's `[gpu.calibration]` table, the committed files untouched; a
    doubled `lockstep_wait_s` adds its closed form to a dp=2 step (two step collectives)."""
    from pathlib import Path

    from dojo.sim.costs import load_calibration

    root = Path(__file__).resolve().parents[2]
    fresh = load_bench("fresh_calibration")
    text = (root / "src/dojo/hardware/systems/cpu.toml").read_text(encoding="utf-8")
    committed = load_calibration("cpu")
    fields = {"lockstep_wait_s": 2 * committed.lockstep_wait_s + 1e-4, "launch_s": 3e-5}
    path = fresh.write_system(text, fields, tmp_path / "cpu-now.toml")
    base = fresh.simulated_with("cpu", "gpt", "dp=2")
    now = fresh.simulated_with(path, "gpt", "dp=2")
    same = fresh.simulated_with(fresh.write_system(text, {"launch_s": 3e-5},
                                                   tmp_path / "cpu-launch.toml"), "gpt", "dp=2")
    assert now - same == pytest.approx(
        2 * (fields["lockstep_wait_s"] - committed.lockstep_wait_s), rel=1e-4)
    assert same != base and load_calibration("cpu") == committed
