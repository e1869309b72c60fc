"""Every pipeline receive is posted before its message is sent, with a bounded number posted.

Gloo sends a message's bytes only once the sender has seen the receiver's receive posted; a
receive posted after the send waits for the sender's event loop (`dojo.runtime.pipeline`,
`PipelineStep._post_receives`). The reference for "before" is the simulator's timeline of the
same schedule (`dojo.sim.pipeline.run_pipeline`), not the runtime: a receive posted while a
stage starts its task i counts as posted when the stage's task i - 1 ends there, and its message
is sent when the sending task ends there. Each stage runs its real tasks on the real model in
this process, with `torch.distributed`'s irecv and isend replaced by recorders (a received
buffer holds zeros), so the test needs no peer processes.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed as dist

from dojo.plan.plan import parse_plan
from dojo.runtime import Batches, Job
from dojo.runtime.job import build_bundle
from dojo.runtime.pipeline import PipelineStep, chunk_ranges, layout_of, schedule_tasks
from dojo.sim.pipeline import run_pipeline

GPT = {"layers": 4, "optimizer": "sgd", "lr": 0.05}
MICRO = 8


class _Work:
    def wait(self) -> None:
        return None


def _posts(plan_text: str, stage: int, monkeypatch: pytest.MonkeyPatch
           ) -> tuple[list[tuple[int, tuple[str, int, int]]], int, list[Any]]:
    """Run `stage`'s tasks of one step; returns (index of the task about to run, receiving task
    as (kind, micro, chunk)) per receive posted, the most receives posted and not yet waited
    for at once, and the stage's tasks."""
    plan = parse_plan(plan_text)
    job = Job(model="gpt", plan=plan_text, batch=MICRO, seq=8, overrides=GPT)
    bundle = build_bundle(job)
    inputs, targets = Batches(bundle, job.batch).get(0)
    micro_in = [tuple(t[i:i + 1] for t in inputs) for i in range(MICRO)]
    micro_tgt = [tuple(t[i:i + 1] for t in targets) for i in range(MICRO)]
    virtual = plan.pp * plan.interleave
    step = PipelineStep(model=bundle.model, layout=layout_of(bundle.model, plan.pp),
                        ranges=chunk_ranges([GPT["layers"] // virtual] * virtual),
                        stage_rank=lambda v: v % plan.pp,
                        shape=(1, 8, int(bundle.config.hidden)), micro=MICRO, pp=plan.pp,
                        loss_fn=bundle.loss_fn)
    posts: list[tuple[int, tuple[str, int, int]]] = []
    open_now, most = [0], [0]

    class Received(_Work):
        def wait(self) -> None:
            open_now[0] -= 1

    def irecv(buf: torch.Tensor, src: int, tag: int) -> _Work:
        buf.zero_()
        pair, direction = divmod(tag, 2)   # the runtime's tag: (v * micro + m) * 2 + dir
        v, m = divmod(pair, MICRO)
        posts.append((len(step.executed), ("B" if direction else "F", m, v // plan.pp)))
        open_now[0] += 1
        most[0] = max(most[0], open_now[0])
        return Received()

    monkeypatch.setattr(dist, "irecv", irecv)
    monkeypatch.setattr(dist, "isend", lambda *a, **k: _Work())
    tasks = schedule_tasks(plan.schedule, stage, plan.pp, plan.interleave, MICRO)
    step.run(tasks, micro_in, micro_tgt)
    return posts, most[0], tasks


@pytest.mark.parametrize("plan_text", [
    "pp=2,mb=1,schedule=1f1b,precision=fp32",
    "pp=2,mb=1,schedule=gpipe,precision=fp32",
    "pp=2,interleave=2,mb=1,precision=fp32",
])
@pytest.mark.parametrize("backward", [1.0, 2.0])
def test_every_receive_is_posted_before_its_send_in_the_simulated_timeline(
        plan_text: str, backward: float, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = parse_plan(plan_text)
    spans = run_pipeline(plan.pp, plan.interleave, MICRO, plan.schedule,
                         lambda stage, task: 1.0 if task[0] == "F" else backward, 0.0,
                         explicit=10**6)
    end = {(s.stage, s.kind, s.micro, s.chunk): s.end for s in spans}
    virtual = plan.pp * plan.interleave
    for stage in range(plan.pp):
        posts, most, tasks = _posts(plan_text, stage, monkeypatch)
        expected = sum(1 for kind, v, _ in tasks
                       if (kind == "F" and v > 0) or (kind == "B" and v < virtual - 1))
        assert len(posts) == expected
        # the buffers in flight are bounded by the schedule, not by the micro-batches
        assert most <= 2 * virtual + 2 < expected
        for index, (kind, m, chunk) in posts:
            before = tasks[index - 1] if index else None
            posted_at = end[(stage, before[0], before[2], before[1] // plan.pp)] if before else 0.0
            v = chunk * plan.pp + stage
            sender = v - 1 if kind == "F" else v + 1
            sent_at = end[(sender % plan.pp, kind, m, sender // plan.pp)]
            assert posted_at <= sent_at, (stage, kind, m, chunk, posted_at, sent_at)
