"""The compiled plan's lower bound: seconds `simulate.simulate` cannot beat, from the task
durations alone (the plan search refines and prunes with it before simulating)."""

from __future__ import annotations

from dojo.compiler.program import Program
from dojo.sim.memory import device_memory
from dojo.sim.pipeline import RING_MAX_UNITS, group_chain_bound, makespan_bounds, ring_spans
from dojo.sim.simulate import Prepared, _collective_of, prepare, task_durations
from dojo.sim.stepend import finish_step, post_bound


def lower_bound(program: Program, prepared: Prepared | None = None) -> float:
    """Seconds `simulate(program)` cannot beat, from the task durations alone. Device s's first
    task (a forward) waits for the forwards of virtual stages 0..s-1 and their transfers (its
    head); it runs its m micro-batches' tasks in turn; after its last (a backward of a stage
    >= s) the backwards of stages s-1..0 run on other devices (the tail), then stage 0's sync
    and optimizer; its own follow its last task. So the step is at least max over s of head_s
    + m W_s + max(tail_s + post_0, post_s), whatever the schedule; and device 0's own order
    against the rings of the others (`pipeline.ring_spans`, each task no later than simulated)
    followed by its sync and optimizer as `stepend.finish_step` runs them (monotone in the
    spans); with `vp_group` also `pipeline.group_chain_bound`. post_s: `stepend.post_bound`,
    the tied embedding's all-reduce on the first and last stage included."""
    plan = program.plan
    dev, _, times = prepared or prepare(program, device_memory(program, chip_report=False))
    fwd, bwd, transfer = task_durations(program, dev, times)
    ends, tails = makespan_bounds(plan.pp, program.microbatches, fwd, bwd, transfer)
    collective = _collective_of(program, dev)
    post = [post_bound(program, dev, stage, collective) for stage in range(plan.pp)]
    bound = max(e + max(t + post[0], p) for e, t, p in zip(ends, tails, post))
    if program.microbatches * plan.interleave <= RING_MAX_UNITS:   # bounded work
        spans = ring_spans(plan.pp, program.microbatches, plan.vp_group, fwd, bwd, transfer, 0,
                           plan.schedule)
        bound = max(bound, finish_step(program, dev, spans, collective, stages=1)[1][0][2])
    if plan.schedule == "interleaved" and plan.vp_group:
        chain = group_chain_bound(plan.pp, program.microbatches, plan.vp_group, fwd, bwd,
                                  transfer)
        bound = max(bound, chain + post[0])
    return bound
