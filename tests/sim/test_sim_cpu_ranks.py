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
