"""Memory per pipeline stage from the per-device work alone, without compiling a program: the
plan search's memory screen.

`stage_totals` gives, per stage, the same bytes `memory.device_memory` finds in the compiled
program (weights, gradients and optimizer state from the stage's own blocks, activations in
flight from the schedule walk over its own chunks), term by term from the same functions, so
the search can drop a plan that does not fit before compiling it (a test compares the two over
whole plan spaces).
"""

from __future__ import annotations

from dojo.compiler.experts import MoeLayout, expert_dp, expert_layout
from dojo.compiler.program import _saved, tied_copy
from dojo.compiler.work import ModelWork
from dojo.plan.plan import Plan, fast_replace, microbatches, plan_split
from dojo.plan.policies import policy_modules, rebuilds_selective
from dojo.sim.memory import peak_in_flight, state_factors, state_of
from dojo.sim.pipeline import warm_units


def chunk_params(work: ModelWork, plan: Plan) -> list[float]:
    """Trainable parameters (whole, before the tp split) of each virtual stage, the last
    one's copy of a tied embedding included (`compiler.program._chunk`)."""
    chunks = plan.pp * plan.interleave
    split = plan_split(plan, work.repeat) if work.block else None
    out = []
    for v in range(chunks):
        params = float(work.block.params * split[v]) if work.block and split else 0.0
        params += work.pre.params if v == 0 else 0
        params += work.post.params + tied_copy(work, plan) if v == chunks - 1 else 0
        out.append(params)
    return out


def chunk_saved(work: ModelWork, plan: Plan) -> list[float]:
    """Bytes each virtual stage keeps from forward to backward for one micro-batch (as
    `compiler.program` counts them: checkpointing applies to the repeated blocks only)."""
    chunks = plan.pp * plan.interleave
    split = plan_split(plan, work.repeat) if work.block else None
    # an op-level or module policy's drops ride in the selective slots (compiler.program)
    recompute = "selective" if rebuilds_selective(plan.recompute) else plan.recompute
    edge = "selective" if policy_modules(plan.recompute) is not None else "none"
    out = []
    for v in range(chunks):
        saved = _saved(work.pre, edge) if v == 0 else 0.0
        if work.block is not None and split:
            saved += _saved(work.block, recompute) * split[v]
        saved += _saved(work.post, edge) if v == chunks - 1 else 0.0
        out.append(saved)
    return out


def stage_activations(work: ModelWork, plan: Plan, batch: int,
                      stages: range | None = None, saved: list[float] | None = None
                      ) -> list[float]:
    """Activation bytes in flight per device of each pipeline stage (`memory.in_flight_bytes`),
    or of `stages` only (in their order); `saved`: `chunk_saved(work, plan)` if known."""
    stages = range(plan.pp) if stages is None else stages
    saved = chunk_saved(work, plan) if saved is None else saved
    micro = microbatches(plan, batch)
    extra = _rerun_bytes(work, plan)
    if plan.interleave == 1 and plan.schedule != "gpipe":
        # 1F1B: the walk's warm forwards and one more, min(pp - s, micro) micro-batches (to
        # rounding: the walk adds them one at a time), in O(1) instead of O(pp) per stage
        return [min(plan.pp - s, micro) * saved[s] + extra for s in stages]
    return [peak_in_flight(plan.schedule, s, plan.pp, micro, plan.interleave, saved,
                           plan.vp_group) + extra for s in stages]


def _rerun_bytes(work: ModelWork, plan: Plan) -> float:
    """The one block a recompute reruns at a time (`memory.in_flight_bytes`)."""
    if plan.recompute == "full" and work.block is not None:
        return work.block.saved_bytes
    if rebuilds_selective(plan.recompute) and work.block is not None:
        return max(0.0, work.block.selective_saved)
    return 0.0


def fewest_in_flight(work: ModelWork, plan: Plan, batch: int) -> list[float]:
    """Bytes below the activations in flight on each stage of the interleaved `plan` at every
    `vp_group` N: the first warm + 1 units of the order are held, warm >= warm at N = 1
    (`pipeline.warm_units` grows with N), each unit a micro-batch of one of the stage's chunks;
    every unit when the warm phase holds them all."""
    saved = chunk_saved(work, plan)
    micro, pp, virtual = microbatches(plan, batch), plan.pp, plan.interleave
    out = []
    for s in range(pp):
        mine = [saved[c * pp + s] for c in range(virtual)]
        units = warm_units("interleaved", s, pp, micro, virtual, 1) + 1
        held = min(mine) * units if units <= micro * virtual else micro * sum(mine)
        out.append(held + _rerun_bytes(work, plan))
    return out


def stage_totals(work: ModelWork, plan: Plan, activations: list[float],
                 layout: MoeLayout | None = None) -> list[float]:
    """Bytes per device of each pipeline stage (`memory.Memory.total` of that stage), given its
    `stage_activations` and the model's routed experts (`layout`, None without)."""
    per_param = work.optimizer_state_bytes / max(1, work.param_count)
    state = stage_state(work, plan, layout, per_param)
    return [st + a for st, a in zip(state, activations)]


def saved_sections(work: ModelWork, recompute: str) -> tuple[float, float, float]:
    """Bytes kept per micro-batch by the embedding side, one block and the head side."""
    block = _saved(work.block, recompute) if work.block is not None else 0.0
    return _saved(work.pre, "none"), block, _saved(work.post, "none")


def saved_lows(works: list[ModelWork] | None, recomputes: tuple[str, ...]
               ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Bounds below the saved bytes (embedding side, block, head side) of a micro-batch and of
    a sample, over every mb and recompute policy, from the work at mb = 1, 2 and 3: the bytes
    are affine in mb from 2 on (`session.graph_at`), so a micro-batch holds at least min(at 1,
    at 2) when they grow, and a sample at least min(at 1, at 2 / 2, the slope). Zeros without
    `works` (captures that are not affine)."""
    if works is None:
        return (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)
    at = [[saved_sections(w, rec) for w in works] for rec in recomputes]
    micro, sample = [], []
    for i in range(3):
        ones, twos, threes = ([a[m][i] for a in at] for m in range(3))
        slopes = [c - b for b, c in zip(twos, threes)]
        micro.append(min(ones + twos) if min(slopes) >= 0 else 0.0)
        sample.append(max(0.0, min(ones + [b / 2 for b in twos] + slopes)))
    return tuple(micro), tuple(sample)


def least_in_flight(split: list[int] | None, pp: int, interleave: int,
                    per_micro: tuple[float, float, float],
                    per_sample: tuple[float, float, float], samples: float) -> list[float]:
    """A bound below the activations in flight on each stage for every micro-batch size,
    schedule and recompute policy, given bounds below the saved bytes of a micro-batch
    (`per_micro`: embedding side, block, head side) and of a sample (`per_sample`), and the
    samples per replica. 1F1B and interleaved 1F1B hold at least the first warm + 1 units of
    their order (`memory.peak_in_flight`), warm = pp - s - 1 for 1F1B and
    (interleave - 1) N + 2 min(N, pp) (pp - 1 - s) // pp interleaved with groups of N
    micro-batches (`pipeline.warm_units`), least at N = 1, which runs for every micro-batch
    count (`plan.group_runs`; the search's `group_sizes`), each unit a micro-batch of one of the
    stage's chunks, unless all micro x interleave units fit in the warm phase, when every
    micro-batch of every chunk is held: at least samples x the chunks' bytes per sample. GPipe
    holds every micro-batch; full recompute only adds."""
    chunks = pp * interleave
    blocks = split[:chunks] if split else [0] * chunks
    last = chunks - 1
    # Each chunk's bytes once (the search asks this of every family); stage s holds chunks
    # s, s + pp, ... (`[s::pp]`), summed in that order.
    micro = [per_micro[0] * (v == 0) + per_micro[1] * n + per_micro[2] * (v == last)
             for v, n in enumerate(blocks)]
    sample = [per_sample[0] * (v == 0) + per_sample[1] * n + per_sample[2] * (v == last)
              for v, n in enumerate(blocks)]
    out = []
    for s in range(pp):
        units = pp - s if interleave == 1 else (interleave - 1) + 2 * (pp - 1 - s) // pp + 1
        out.append(min(units * min(micro[s::pp]), samples * sum(sample[s::pp])))
    return out


def stage_state(work: ModelWork, plan: Plan, layout: MoeLayout | None,
                state_per_param: float, held: list[list[float]] | None = None) -> list[float]:
    """Weights, gradients and optimizer state bytes per device of each pipeline stage, as
    `memory.device_memory` counts them in the compiled program (`experts.param_groups`): a
    chunk holding `whole` routed-expert parameters keeps whole x f // ep of them (as
    `experts.apply_experts` writes its params; f = tp with etp = 1, else 1), and whole / ep x f
    of them reduce and shard over `experts.expert_dp`, the rest over dp x cp. Without ep (or
    experts) one group over dp x cp. `held`: `stage_held(work, plan, layout)`, where the caller
    keeps it (it does not depend on dp, cp or ZeRO)."""
    moe = layout is not None and plan.ep > 1
    # `memory.grouped_state`'s sums in its order, with its groups' factors taken once, not
    # per stage
    factors = [state_factors(fast_replace(plan, dp=n, cp=1), state_per_param) for n in
               ((plan.dp_cp, expert_dp(plan)) if moe else (plan.dp_cp,))]
    out = []
    for mine in held or stage_held(work, plan, layout):
        if len(mine) == 1:   # sum() of one term is the term (0 + x)
            a, b, c = state_of(mine[0], factors[0])
            out.append(a + b + c)
            continue
        parts = [state_of(h, f) for f, h in zip(factors, mine)]
        out.append(sum(p[0] for p in parts) + sum(p[1] for p in parts)
                   + sum(p[2] for p in parts))
    return out


def stage_held(work: ModelWork, plan: Plan, layout: MoeLayout | None) -> list[list[float]]:
    """Per pipeline stage, the parameters each of its groups holds after the tp split
    (`stage_state`): [dense and the rest] without ep, else [the rest, the routed experts]."""
    params = chunk_params(work, plan)
    split = plan_split(plan, work.repeat) if work.block else None
    moe = layout is not None and plan.ep > 1
    whole_tp = expert_layout(plan)[1]   # etp = 1: each rank's experts whole over tp
    out = []
    for s in range(plan.pp):
        mine = [c * plan.pp + s for c in range(plan.interleave)]
        if layout is None or not moe:
            out.append([sum(params[v] for v in mine) / plan.tp])
            continue
        whole = [layout.block_params * (split[v] if split else 0)
                 + (layout.outer_params if v == 0 else 0) for v in mine]
        total = sum(params[v] - w + w * whole_tp // plan.ep
                    for v, w in zip(mine, whole)) / plan.tp
        experts = sum(w / plan.ep * whole_tp for w in whole) / plan.tp
        out.append([total - experts, experts])
    return out
