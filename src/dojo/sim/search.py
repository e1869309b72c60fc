"""Automatic planning: the fastest plan that fits, found by branch and bound over the simulator.

The space is every plan the plan vocabulary can write for the model, the devices and the batch:
every dp x tp x pp that fills the devices and divides the model (tensor parallelism across any
level, not only inside a server), every micro-batch size `mb` that divides the per-replica batch,
every `interleave` whose virtual stages divide the blocks, every schedule, recompute and ZeRO
stage, and sequence parallelism on and off. Omitted, because each is dominated (never faster,
never smaller) or identical:
- `overlap=off`: every task takes at least as long as with overlap (a blocking send adds to
  it), the pipeline's task ends are monotone in the durations (a task starts at the max of its
  device's previous end and its input's end plus the transfer), and the sync then ends at
  last.end + sync instead of max(last.start + sync, last.end + sync / blocks); memory is the same.
- with pp = 1, `schedule=gpipe` (nothing waits on another device, so both orders take the sum of
  the same tasks, and GPipe holds every micro-batch) and `interleave` > 1 (refused: nothing to
  interleave); `schedule=1f1b` with interleave > 1 is the interleaved schedule.
- with dp = 1, `zero` > 0 (it shards over dp: the same bytes and times); with tp = 1, `sp=on`
  (refused).
`precision` and `fusion` are held at the caller's values: they say what the software runs (its
number formats; whether a compiler fuses kernels), which a plan of the same step cannot choose.
Context parallelism (`context_space`): for a sequence model, every cp that divides the devices and
cuts the sequence into 2 cp chunks of at least `MIN_CP_TOKENS` / 2 tokens each, over the space of
the devices / cp left (cp_comm held at p2p, the ring). The floor is a restriction for speed, not
a dominance argument: each cp needs its own captures, and below 4,096 tokens per rank a ring step's
attention is short against its transfer and cp only shrinks activations that recompute and pp
also shrink.
Expert parallelism (MoE models): every ep that divides both dp and the experts; `imbalance` is
held at 1 (a property of the router's balance, not a choice of the plan).

Bounds, cheapest first; each is a true lower bound of the simulated step (a test checks both over
a whole space):
1. per plan, before compiling it: a device's weights, gradients and optimizer state (activations
   left out) must fit, else its whole family (tp, pp, interleave, zero) is rejected at once; and
   `makespan_bounds` on the chunks' op times alone (no communication, no memory streaming);
2. compiled, and if it fits: `simulate.lower_bound`, the same pipeline bound on the exact task
   durations with transfers, gradient sync and the optimizer.
Plans wait in one queue ordered by their best bound; the head is refined (1 -> 2) or simulated
(2), and the search stops when the head's bound exceeds the K-th best simulated time. Since no
plan whose bound is below that time is left unsimulated, the result equals exhaustive
enumeration (`exhaustive`; a test compares them on a space whose best micro-batch is 25).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from dojo.compiler.experts import MoeLayout, a2a_bytes, ep_gemm, replays_experts, stage_groups
from dojo.compiler.mapping import (
    device_count,
    device_name,
    group_levels,
    leaves_per_device,
    zplane_levels,
)
from dojo.compiler.program import PRECISION_BYTES
from dojo.compiler.work import ModelWork
from dojo.errors import ConfigError, DojoError
from dojo.hardware.spec import SystemSpec
from dojo.plan.plan import ModelShape, Plan, chunk_blocks, validate_plan
from dojo.sim.collectives import collective_time
from dojo.sim.costs import DeviceModel
from dojo.sim.fp8 import fp8_device
from dojo.sim.memory import capacity_of, device_memory, grouped_state
from dojo.sim.pipeline import makespan_bounds
from dojo.sim.session import (
    Simulated,
    captured,
    check_inputs,
    compile_model,
    context_seq,
    experts_of,
    fuses_attention,
    graph_at,
    model_shape,
    simulate_model,
    work_for,
)
from dojo.sim.simulate import device_for, lower_bound, simulate

RECOMPUTES = ("none", "selective", "full")
MIN_CP_TOKENS = 4096   # tokens per rank below which the search tries no larger cp
SAFETY = 1 - 1e-9   # bounds add the same seconds in another order than the simulation


@dataclass(frozen=True)
class Candidate:
    plan: Plan
    step_time_s: float
    mfu: float
    fits: bool
    simulated: Simulated

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan.text(), "step_time_s": self.step_time_s, "mfu": self.mfu,
                "fits": self.fits}


@dataclass(frozen=True)
class Search:
    best: Candidate
    candidates: tuple[Candidate, ...]
    rejected: tuple[tuple[str, str], ...]   # (family, reason)
    search_s: float
    evaluated: int
    considered: int

    def to_json(self) -> dict[str, Any]:
        return {"best": self.best.to_json(),
                "candidates": [c.to_json() for c in self.candidates],
                "rejected": [{"family": f, "reason": r} for f, r in self.rejected],
                "search_s": self.search_s}


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n ** 0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def plan_space(shape: ModelShape, devices: int, batch: int, precision: str = "bf16",
               fusion: str = "full") -> Iterator[Plan]:
    """Every plan worth considering (module docstring): valid, and not dominated."""
    for tp in _divisors(devices):
        for pp in _divisors(devices // tp):
            dp = devices // (tp * pp)
            if batch % dp:
                continue
            inters = [v for v in range(1, shape.layers + 3) if pp > 1 or v == 1]
            for inter in (v for v in inters if chunk_blocks(shape.layers, pp * v)):
                for mb in _divisors(batch // dp):
                    yield from _variants(Plan(dp=dp, tp=tp, pp=pp, mb=mb, interleave=inter,
                                              precision=precision, fusion=fusion),
                                         shape, devices, batch)


def context_space(shape: ModelShape, devices: int, batch: int, cps: tuple[int, ...] = (1,),
                  precision: str = "bf16", fusion: str = "full") -> Iterator[Plan]:
    """`plan_space` of the devices / cp left, for each context-parallel size in `cps`."""
    for cp in (c for c in cps if devices % c == 0):
        for plan in plan_space(shape, devices // cp, batch, precision, fusion):
            yield replace(plan, cp=cp)


def context_sizes(model: str, overrides: Mapping[str, Any], seq: int | None,
                  devices: int) -> tuple[int, ...]:
    """The cp sizes the search tries (module docstring): 1, and for a sequence model the
    powers of two that divide the devices and keep seq / cp >= MIN_CP_TOKENS."""
    out, cp = [1], 2
    while devices % cp == 0:
        try:
            local = context_seq(model, overrides, Plan(cp=cp), seq)
        except ConfigError:
            break
        if local is None or local < MIN_CP_TOKENS:
            break
        out.append(cp)
        cp *= 2
    return tuple(out)


def _variants(base: Plan, shape: ModelShape, devices: int, batch: int) -> Iterator[Plan]:
    """The schedules, recompute, ZeRO and sp settings of `base` that `validate_plan` accepts
    (it is run once per schedule: the other settings cannot make a valid plan invalid)."""
    schedules = ["1f1b" if base.interleave == 1 else "interleaved"]
    if base.pp > 1:
        schedules.append("gpipe")
    fields = {k: getattr(base, k) for k in ("dp", "tp", "pp", "cp", "mb", "interleave",
                                            "precision", "fusion")}
    for schedule in schedules:
        try:
            validate_plan(Plan(**fields, schedule=schedule), shape, devices, batch)
        except ConfigError:
            continue
        for rec in RECOMPUTES:
            for zero in (0, 1, 2, 3) if base.dp > 1 else (0,):
                for sp in (False, True) if base.tp > 1 else (False,):
                    for ep in expert_sizes(shape, base.dp):
                        yield Plan(**fields, schedule=schedule, recompute=rec, zero=zero, sp=sp,
                                   ep=ep)


def expert_sizes(shape: ModelShape, dp: int) -> list[int]:
    """The ep the search tries: 1, and for an MoE model every divisor of both dp and its
    experts (ep is carved out of dp and splits whole experts)."""
    return [e for e in _divisors(dp) if shape.experts and shape.experts % e == 0] or [1]


def best_plan(model: str, overrides: Mapping[str, Any], spec: SystemSpec, batch: int,
              seq: int | None = None, top: int = 5, precision: str = "bf16",
              fusion: str = "full") -> Search:
    """Search the plan space of `model` on `spec` for global batch `batch` (module docstring)."""
    start = time.perf_counter()
    check_inputs(batch, seq)
    graph, config = captured(model, overrides, 1, seq)
    shape = model_shape(graph, config)
    devices = device_count(spec)
    cps = context_sizes(model, overrides, seq, devices)
    space = list(context_space(shape, devices, batch, cps, precision, fusion))
    if not space:
        raise DojoError(f"no plan fits {model} on {spec.name} with batch {batch}: no dp x tp x "
                        f"pp = {devices} divides both the model ({shape.layers} blocks, "
                        f"{shape.heads} heads) and the batch")
    screen = _Screen(model, overrides, spec, batch, seq)
    queue = screen.ranked(space)
    found: list[Candidate] = []
    evaluated = 0
    while queue:
        bound, _, index, tier, plan = heapq.heappop(queue)
        if len(found) >= top and bound > found[top - 1].step_time_s:
            break
        if tier == 1:
            refined = screen.refine(plan)
            if refined is not None:
                heapq.heappush(queue, (refined, _simplicity(plan), index, 2, plan))
            continue
        program, graph = compile_model(model, overrides, spec, plan, batch, seq, derive=True)
        sim = Simulated(program=program, result=simulate(program), graph=graph)
        evaluated += 1
        r = sim.result
        found.append(Candidate(plan, r.step_time_s, r.mfu, r.memory.fits, sim))
        found.sort(key=_preference)
    if not found:
        reasons = "; ".join(f"{f}: {r}" for f, r in screen.rejected.items()) or "none fits"
        raise DojoError(f"no plan fits {model} on {spec.name} with batch {batch}: "
                        f"{reasons[:2000]}")
    fitting = {_family(c.plan) for c in found}
    rejected = tuple((f, r) for f, r in screen.rejected.items() if f not in fitting)
    return Search(best=found[0], candidates=tuple(found[:top]), rejected=rejected,
                  search_s=time.perf_counter() - start, evaluated=evaluated,
                  considered=len(space))


def _family(plan: Plan) -> str:
    cp = f",cp={plan.cp}" if plan.cp > 1 else ""
    ep = f",ep={plan.ep}" if plan.ep > 1 else ""
    return f"tp={plan.tp}{cp},pp={plan.pp}{ep},recompute={plan.recompute},zero={plan.zero}"


def _simplicity(p: Plan) -> tuple[int, ...]:
    """Fewer moving parts first: no recompute, no ZeRO, less tp and pp, 1F1B, no sp."""
    return (RECOMPUTES.index(p.recompute), p.zero, p.tp, p.cp, p.ep, p.pp, p.interleave,
            int(p.schedule == "gpipe"), int(p.sp), p.mb)


def _preference(c: Candidate) -> tuple[Any, ...]:
    """Fastest first; among equal times (to 1e-12 s), the plan with fewer moving parts."""
    return (round(c.step_time_s, 12), _simplicity(c.plan), c.plan.text())


class _Screen:
    """The bounds of the module docstring, with what they share cached."""

    def __init__(self, model: str, overrides: Mapping[str, Any], spec: SystemSpec,
                 batch: int, seq: int | None) -> None:
        self.args = (model, overrides, spec, batch, seq)
        self.rejected: dict[str, str] = {}
        self.capacity = capacity_of(spec)[0]
        self._dev: dict[str, DeviceModel] = {}
        self._sums: dict[tuple[Any, ...], tuple[float, ...]] = {}
        self._bounds: dict[tuple[Any, ...], float] = {}
        self._state: dict[tuple[Any, ...], bool] = {}
        self._layouts: dict[tuple[int, int], MoeLayout | None] = {}

    def ranked(self, space: list[Plan]) -> list[tuple[float, Any, int, int, Plan]]:
        """The first bound of every plan whose family's state fits, as a heap; ties go to the
        simpler plan, then to the order of the space."""
        queue = []
        for index, plan in enumerate(space):
            if self._state_fits(plan):
                queue.append((self._first_bound(plan), _simplicity(plan), index, 1, plan))
        heapq.heapify(queue)
        return queue

    def refine(self, plan: Plan) -> float | None:
        """The second bound, or None (and the reason recorded) if the plan does not fit."""
        model, overrides, spec, batch, seq = self.args
        program, _ = compile_model(model, overrides, spec, plan, batch, seq, derive=True)
        memory = device_memory(program, chip_report=False)
        if not memory.fits:
            self.rejected.setdefault(_family(plan), memory.reason)
            return None
        return lower_bound(program, memory) * SAFETY

    def _work(self, plan: Plan, mb: int | None = None) -> ModelWork:
        model, overrides, spec, _, seq = self.args
        return work_for(model, overrides, mb or plan.mb, seq, plan, derive=True,
                        fused_attention=fuses_attention(spec))

    def _state_fits(self, plan: Plan) -> bool:
        """Weights, gradients and optimizer state of the fullest stage within capacity."""
        key = (plan.tp, plan.pp, plan.interleave, plan.zero, plan.dp, plan.precision, plan.cp,
               plan.ep)
        if key not in self._state:
            work = self._work(plan, 2)
            per_param = work.optimizer_state_bytes / max(1, work.param_count)
            experts = _stage_experts(work, plan, self._layout(plan, 2))
            state = [sum(grouped_state(plan, stage_groups(plan, params, ex), per_param))
                     for params, ex in zip(_stage_params(work, plan), experts)]
            worst = max(range(plan.pp), key=lambda s: state[s])
            self._state[key] = state[worst] <= self.capacity
            if not self._state[key]:
                gb = 1e9
                for rec in RECOMPUTES:
                    self.rejected.setdefault(
                        _family(replace(plan, recompute=rec)),
                        f"stage {worst} needs {state[worst] / gb:.2f} GB per "
                        f"{device_name(self.args[2])} in weights, gradients and optimizer state "
                        f"alone (before activations) > capacity {self.capacity / gb:.2f} GB")
        return self._state[key]

    def _first_bound(self, plan: Plan) -> float:
        """`makespan_bounds` on the chunks' op times (seconds per micro-batch) alone."""
        key = (plan.mb, plan.tp, plan.sp, plan.pp, plan.interleave, plan.recompute, plan.cp,
               plan.ep)
        if key not in self._bounds:
            fwd, bwd = self._chunk_times(plan)
            micro = self.args[3] // (plan.dp * plan.mb)
            ends, tails = makespan_bounds(plan.pp, micro, fwd, bwd, 0.0)
            self._bounds[key] = max(e + t for e, t in zip(ends, tails)) * SAFETY
        return self._bounds[key]

    def _chunk_times(self, plan: Plan) -> tuple[list[float], list[float]]:
        pre_f, pre_b, blk_f, blk_b, blk_sel, post_f, post_b = self._section_sums(plan)
        work = self._work(plan)
        chunks = plan.pp * plan.interleave
        split = chunk_blocks(work.repeat, chunks) if work.block else None
        rec = {"full": blk_f, "selective": blk_sel}.get(plan.recompute, 0.0)
        fwd, bwd = [], []
        for v in range(chunks):
            n = split[v] if split else 0
            first, last = float(v == 0), float(v == chunks - 1)
            fwd.append(first * pre_f + n * blk_f + last * post_f)
            bwd.append(first * pre_b + n * (blk_b + rec) + last * post_b)
        return self._with_all_to_all(plan, work, split, fwd, bwd)

    def _with_all_to_all(self, plan: Plan, work: ModelWork, split: list[int] | None,
                         fwd: list[float], bwd: list[float]) -> tuple[list[float], list[float]]:
        """Per virtual stage (`split`: its blocks), op times plus, with ep, each MoE layer's
        dispatch and combine all-to-alls: exposed in every task, so the bound stays a bound."""
        layout = self._layout(plan)
        if layout is None or plan.ep == 1:
            return fwd, bwd
        spec = self.args[2]
        cal = self._device(plan.precision).calibration
        levels = group_levels(spec, plan.ep, plan.tp)
        nbytes = a2a_bytes(layout, plan.tp, PRECISION_BYTES[plan.precision]["activation_scale"])
        pair = 2 * min(collective_time("all_to_all", nbytes, lv, cal.link_efficiency,
                                       cal.collective_latency_s)[0]
                       for lv in (levels, zplane_levels(spec, levels) or levels))
        again = replays_experts(work, layout, plan)
        moe = [(split[v] if split else 0) * layout.block_layers for v in range(len(fwd))]
        outer = [layout.outer_layers if v == 0 else 0 for v in range(len(fwd))]
        return ([f + pair * (m + o) for f, m, o in zip(fwd, moe, outer)],
                [b + pair * (m + o + (m if again else 0)) for b, m, o in zip(bwd, moe, outer)])

    def _section_sums(self, plan: Plan) -> tuple[float, ...]:
        key = (plan.mb, plan.tp, plan.sp, plan.cp, plan.precision, plan.ep)
        if key not in self._sums:
            work = self._work(plan)
            dev = self._device(plan.precision)
            block = work.block
            layout, scale = self._layout(plan), PRECISION_BYTES[plan.precision]["activation_scale"]

            def total(ops: Any) -> float:   # expert GEMMs as one ep rank runs them
                return sum(dev.op_time(ep_gemm(o, layout, plan.ep, plan.tp, scale)
                                       if layout else o) for o in ops)

            self._sums[key] = (
                total(work.pre.forward), total(work.pre.backward),
                total(block.forward) if block else 0.0, total(block.backward) if block else 0.0,
                total(block.recompute_selective) if block else 0.0,
                total(work.post.forward), total(work.post.backward))
        return self._sums[key]

    def _layout(self, plan: Plan, mb: int | None = None) -> MoeLayout | None:
        """The routed experts at micro-batch `mb` (the plan's by default), or None."""
        model, overrides, _, _, seq = self.args
        key = (mb or plan.mb, plan.cp)
        if key not in self._layouts:
            local = context_seq(model, overrides, plan, seq)
            graph, config = graph_at(model, overrides, key[0], local, derive=True)
            self._layouts[key] = experts_of(graph, config, key[0], local)
        return self._layouts[key]

    def _device(self, precision: str) -> DeviceModel:
        if precision not in self._dev:
            spec = self.args[2]
            dev = device_for(spec, precision, leaves_per_device(spec))
            if precision == "fp8":  # every matrix op at the FP8 peak: still a lower bound
                dev = fp8_device(dev, spec, leaves_per_device(spec))
            self._dev[precision] = dev
        return self._dev[precision]


def _stage_params(work: ModelWork, plan: Plan) -> list[float]:
    """Trainable parameters (whole, before the tp split) on each pipeline stage."""
    chunks = plan.pp * plan.interleave
    split = chunk_blocks(work.repeat, chunks) if work.block else None
    per_stage = [0.0] * plan.pp
    for v in range(chunks):
        params = (work.block.params * split[v]) if work.block and split else 0
        params += work.pre.params if v == 0 else 0
        params += work.post.params if v == chunks - 1 else 0
        per_stage[v % plan.pp] += params
    return per_stage


def _stage_experts(work: ModelWork, plan: Plan, layout: MoeLayout | None) -> list[float]:
    """Routed-expert parameters (whole) on each pipeline stage: the block's share of each
    stage's blocks, and the experts outside the block on the first stage."""
    if layout is None or work.block is None or not work.block.params:
        return [0.0] * plan.pp
    share = layout.block_params / work.block.params
    out = []
    for stage, params in enumerate(_stage_params(work, plan)):
        blocks = params - (work.pre.params if stage == 0 else 0) \
            - (work.post.params if stage == plan.pp - 1 else 0)
        out.append(blocks * share + (layout.outer_params if stage == 0 else 0))
    return out


def exhaustive(model: str, overrides: Mapping[str, Any], spec: SystemSpec, batch: int,
               seq: int | None = None, precision: str = "bf16") -> Candidate:
    """Simulate every plan of the space, each from its own capture (the reference the search
    is tested against)."""
    graph, config = captured(model, overrides, 1, seq)
    shape = model_shape(graph, config)
    best: Candidate | None = None
    devices = device_count(spec)
    cps = context_sizes(model, overrides, seq, devices)
    for plan in context_space(shape, devices, batch, cps, precision):
        sim = simulate_model(model, overrides, spec, plan, batch, seq)
        if not sim.result.memory.fits:
            continue
        cand = Candidate(plan, sim.result.step_time_s, sim.result.mfu, True, sim)
        if best is None or _preference(cand) < _preference(best):
            best = cand
    if best is None:
        raise DojoError(f"no plan fits {model} on {spec.name}")
    return best
