"""The end of a step, after each stage's last backward: gradient synchronisation, the tied
embedding's all-reduce, the optimizer update (`simulate.simulate` and `stepbound.lower_bound`).

Each pipeline stage reduces its own gradients over its data-parallel group (`post_times`;
bucket by bucket beside the backward with `overlap`, `dp_sync_end`). With pp > 1 and a tied
embedding (`compiler.program.tied_copy`) the first and the last stage then sum their copies'
gradients (`Program.tied`): a collective of the two, so neither updates before both have
reached it. Megatron-LM issues it after the data-parallel reduction (`finalize_model_grads`:
`finish_grad_sync`, then `_allreduce_embedding_grads`; in 2021-22 `reduce_model_grads`
likewise, or before the distributed optimizer's reduce-scatter, which is the same sum of
seconds); dojo's eager runtime before its flat data-parallel all-reduce
(`runtime.trainer.Trainer._sync_gradients`). Either way it is exposed: nothing of the step
overlaps it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dojo.compiler.experts import param_groups
from dojo.compiler.mapping import GroupLevel
from dojo.compiler.program import PRECISION_BYTES, Program, grad_bytes
from dojo.plan.plan import Plan
from dojo.sim.costs import DeviceModel
from dojo.sim.eager import stage_param_tensors, sync_host_time
from dojo.sim.fp8 import gathered_weight_bytes
from dojo.sim.overlap import dp_sync_end, last_bucket_time

Collective = Callable[[str, float, tuple[GroupLevel, ...]], float]  # (kind, bytes, levels) -> s
Interval = tuple[int, float, float]  # (stage, start s, end s)


def overlaps_sync(plan: Plan, dev: DeviceModel) -> bool:
    """Whether the gradient sync overlaps the backward: as the plan says, except on an eager
    device, whose runtime reduces all gradients in one flat all-reduce after the step's last
    backward (`dojo.runtime.trainer.Trainer._sync_gradients`), whatever the plan's overlap."""
    return bool(plan.overlap) and not dev.calibration.eager


def tied_stages(program: Program) -> tuple[int, ...]:
    """The stages that all-reduce the tied embedding's gradients (first, last), or none."""
    return (0, program.plan.pp - 1) if program.tied is not None else ()


def tied_time(program: Program, collective: Collective) -> float:
    """Seconds of the tied embedding's gradient all-reduce (0 without one)."""
    tied = program.tied
    return 0.0 if tied is None else collective(tied.kind, tied.nbytes, tied.levels)


def finish_step(program: Program, dev: DeviceModel, spans: Sequence[Any],
                collective: Collective, stages: int = 0
                ) -> tuple[tuple[Interval, ...], tuple[Interval, ...]]:
    """(synchronisation, optimizer) intervals per stage after the pipeline's `spans`: the
    gradient sync (overlapped with the backward if the plan says so) and the tied embedding's
    all-reduce (see the module docstring), then the update, whose span ends with the calibrated
    fixed per-step overhead (`Calibration.step_overhead_s`: data loading, logging, the step's
    host sync). `stages`: the first so many stages only (0: all), from their spans alone: the
    tied all-reduce then waits for the stages given only, which bounds it from below (the
    compiled bound, `stepbound.lower_bound`). Monotone in the spans' ends."""
    plan, pp = program.plan, stages or program.plan.pp
    last = [max(s.end for s in spans if s.stage == st and s.kind == "B") for st in range(pp)]
    busy = [sum(s.end - s.start for s in spans if s.stage == st) for st in range(pp)]
    posts = [post_times(program, dev, st, collective, busy[st]) for st in range(pp)]
    pair = tuple(st for st in tied_stages(program) if st < pp)
    t_tied = tied_time(program, collective)
    tied_first = bool(pair) and dev.calibration.eager
    ready = list(last)   # when each stage's data-parallel sync may start
    if tied_first:
        ready = [max(last[s] for s in pair) + t_tied if st in pair else r
                 for st, r in enumerate(ready)]
    ends, starts = [], []
    for st in range(pp):
        t_sync = posts[st][0]
        if overlaps_sync(plan, dev):  # bucket by bucket as each stage's gradients complete
            end = dp_sync_end(program, st, spans, collective)
        else:
            end = ready[st] + t_sync
        ends.append(end)
        starts.append(end - t_sync - (t_tied if tied_first and st in pair else 0.0))
    if pair and not tied_first:
        done = max(ends[s] for s in pair) + t_tied
        ends = [done if st in pair else e for st, e in enumerate(ends)]
    sync = tuple((st, starts[st], ends[st]) for st in range(pp))
    opt = tuple((st, ends[st], ends[st] + posts[st][1] + dev.calibration.step_overhead_s)
                for st in range(pp))
    return sync, opt


def post_bound(program: Program, dev: DeviceModel, stage: int, collective: Collective) -> float:
    """Seconds from `stage`'s last backward to the end of its update, at least: its last
    bucket (overlapped) or whole sync, the tied all-reduce on the first and last stage, the
    update and the fixed overhead (`stepbound.lower_bound`)."""
    t_sync, t_opt, _ = post_times(program, dev, stage, collective)
    if overlaps_sync(program.plan, dev):
        t_sync = last_bucket_time(program, stage, collective)
    tied = tied_time(program, collective) if stage in tied_stages(program) else 0.0
    return t_sync + tied + t_opt + dev.calibration.step_overhead_s


def post_times(program: Program, dev: DeviceModel, stage: int, collective: Collective,
               passes_s: float = 0.0) -> tuple[float, float, int]:
    """(gradient sync s, optimizer s, blocks over which the sync overlaps) of one stage whose
    forward and backward tasks took `passes_s` (an eager step's waits depend on it)."""
    plan = program.plan
    t_sync = params = held_params = 0.0
    # per parameter group: the dense weights over dp, with ep the experts' 1/ep over dp / ep
    for held, levels, dp in param_groups(program, stage):
        held_params += held
        t_sync += collective(program.grad_sync_kind, held * grad_bytes(plan), levels)
        if plan.zero >= 1 and levels:   # updated shards gathered back
            t_sync += collective("all_gather", held * gathered_weight_bytes(plan), levels)
        params += held / (dp if plan.zero >= 1 else 1)
    blocks = max(1, sum(c.blocks for c in program.device_chunks(stage)))
    # The update's FLOPs too (a CPU core runs AdamW's sqrt and division below its bandwidth),
    # and on an eager device the host time per parameter tensor outside the kernels.
    t_opt = dev.vector_time(params * optimizer_bytes_per_param(program),
                            params * program.work.optimizer_flops_per_param)
    t_opt += dev.host_step_time(stage_param_tensors(program, stage), program.microbatches,
                                held_params, program.work.modules)
    t_opt += sync_host_time(program, dev, stage, params, t_opt, passes_s)
    return t_sync, t_opt, blocks


def optimizer_bytes_per_param(program: Program) -> float:
    """A fused (multi-tensor) optimizer as Megatron-LM and torch's fused AdamW run it: read the
    master weight, gradient and each state tensor, write the master, the states and the
    low-precision weights; the captured unfused graph is an upper bound. Mixed-precision
    trainers add passes over the FP32 gradients before the update: the global norm for
    gradient clipping (a read) and, with FP16's loss scaling, the unscale and inf check (a read
    and a write: Megatron-LM's `_unscale_main_grads_and_check_for_nan`)."""
    sizes = PRECISION_BYTES[program.plan.precision]
    if program.plan.fusion == "none":  # eager: one kernel per optimizer op, as captured
        return program.work.optimizer_bytes_per_param
    state = program.work.optimizer_state_bytes / max(1, program.work.param_count)
    master = sizes["master"] or sizes["weights"]
    fused = 2 * master + grad_bytes(program.plan) + 2 * state \
        + (sizes["weights"] if sizes["master"] else 0)
    fused = min(fused, program.work.optimizer_bytes_per_param)
    if sizes["master"]:
        fused += grad_bytes(program.plan) * (3 if program.plan.precision == "fp16" else 1)
    return fused
