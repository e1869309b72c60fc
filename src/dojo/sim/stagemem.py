"""Memory per pipeline stage from the per-device work alone, without compiling a program: the
plan search's memory screen.

`stage_totals` gives, per stage, the same bytes `memory.device_memory` finds in the compiled
program (weights, gradients and optimizer state from the stage's own blocks, activations in
flight from the schedule walk over its own chunks), term by term from the same functions, so
the search can drop a plan that does not fit before compiling it (a test compares the two over
whole plan spaces).
"""

from __future__ import annotations

from dojo.compiler.experts import MoeLayout
from dojo.compiler.program import _saved
from dojo.compiler.work import ModelWork
from dojo.plan.plan import Plan, microbatches, plan_split
from dojo.plan.policies import policy_modules, rebuilds_selective
from dojo.sim.memory import peak_in_flight, state_memory


def chunk_params(work: ModelWork, plan: Plan) -> list[float]:
    """Trainable parameters (whole, before the tp split) of each virtual stage."""
    chunks = plan.pp * plan.interleave
    split = plan_split(plan, work.repeat) if work.block else None
    out = []
    for v in range(chunks):
        params = float(work.block.params * split[v]) if work.block and split else 0.0
        params += work.pre.params if v == 0 else 0
        params += work.post.params if v == chunks - 1 else 0
        out.append(params)
    return out


def stage_params(work: ModelWork, plan: Plan) -> list[float]:
    """Trainable parameters (whole, before the tp split) on each pipeline stage."""
    params = chunk_params(work, plan)
    return [sum(params[c * plan.pp + s] for c in range(plan.interleave)) for s in range(plan.pp)]


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


def stage_activations(work: ModelWork, plan: Plan, batch: int) -> list[float]:
    """Activation bytes in flight per device of each pipeline stage (`memory.in_flight_bytes`).
    """
    saved = chunk_saved(work, plan)
    micro = microbatches(plan, batch)
    extra = 0.0   # the one block a recompute reruns at a time (`memory.in_flight_bytes`)
    if plan.recompute == "full" and work.block is not None:
        extra = work.block.saved_bytes
    elif rebuilds_selective(plan.recompute) and work.block is not None:
        extra = max(0.0, work.block.selective_saved)
    return [peak_in_flight(plan.schedule, s, plan.pp, micro, plan.interleave, saved) + extra
            for s in range(plan.pp)]


def stage_totals(work: ModelWork, plan: Plan, activations: list[float]) -> list[float]:
    """Bytes per device of each pipeline stage (`memory.Memory.total` of that stage), given its
    `stage_activations`."""
    per_param = work.optimizer_state_bytes / max(1, work.param_count)
    params = chunk_params(work, plan)
    out = []
    for s in range(plan.pp):
        held = sum(params[c * plan.pp + s] for c in range(plan.interleave)) / plan.tp
        weights, grads, state = state_memory(plan, held, per_param)
        out.append(weights + grads + state + activations[s])
    return out


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
    their order (`memory.peak_in_flight`), warm = 2 (pp - s - 1) + (interleave - 1) pp, each a
    micro-batch of one of the stage's chunks, unless all micro x interleave units fit in the
    warm phase, when every micro-batch of every chunk is held: at least samples x the chunks'
    bytes per sample. GPipe holds every micro-batch; full recompute only adds."""
    chunks = pp * interleave

    def saved(v: int, per: tuple[float, float, float]) -> float:
        n = split[v] if split else 0
        return per[0] * (v == 0) + per[1] * n + per[2] * (v == chunks - 1)

    out = []
    for s in range(pp):
        mine = [c * pp + s for c in range(interleave)]
        units = 2 * (pp - s - 1) + (interleave - 1) * pp + 1
        least = min(saved(v, per_micro) for v in mine)
        every = samples * sum(saved(v, per_sample) for v in mine)
        out.append(min(units * least, every))
    return out


def stage_experts(work: ModelWork, plan: Plan, layout: MoeLayout | None) -> list[float]:
    """Routed-expert parameters (whole) on each pipeline stage: the block's share of each
    stage's blocks, and the experts outside the block on the first stage."""
    if layout is None or work.block is None or not work.block.params:
        return [0.0] * plan.pp
    share = layout.block_params / work.block.params
    out = []
    for stage, params in enumerate(stage_params(work, plan)):
        blocks = params - (work.pre.params if stage == 0 else 0) \
            - (work.post.params if stage == plan.pp - 1 else 0)
        out.append(blocks * share + (layout.outer_params if stage == 0 else 0))
    return out
