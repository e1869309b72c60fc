"""The CPU closed loop with more than one rank (fourth round): what the eager runtime's ranks
do that the simulation must follow."""

from __future__ import annotations

import pytest

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
    4-element all-reduces, rank 1 sleeping `delay` s before each (it is late)."""
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

    buf = torch.ones(4)
    dist.all_reduce(buf)
    dist.barrier()
    run0, sw0 = loop_thread()
    for _ in range(n):
        if rank == 1:
            time.sleep(delay)
        dist.all_reduce(buf)
    run1, sw1 = loop_thread()
    return run1 - run0, sw1 - sw0


@pytest.mark.slow
def test_gloos_loop_thread_busy_polls_on_the_late_rank() -> None:
    """Why a rank's process CPU exceeds its work with more than one rank (an independent
    measurement, /proc's scheduler statistics): the rank whose peer's message arrives before
    it posts its receive has gloo's tcp loop thread running (preempted while runnable, not
    blocked) for much of the wait, the early rank's barely; so `step_thread_cpu_s`, the
    stepping thread's CPU, is the measure of the work (docs/benchmarks.md, fourth round)."""
    from dojo.runtime.launch import launch

    early, late = launch(_late_rank, 2, (0.005, 40), timeout_s=120)
    # 40 waits of >= 5 ms: the late rank's loop thread ran for a good part of 200 ms
    assert late[0] > 0.02 and late[0] > 3 * early[0], (early, late)


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
