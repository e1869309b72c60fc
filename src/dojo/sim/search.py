"""Automatic planning: the fastest plan that fits, found by branch and bound over the simulator.

The space is every plan the plan vocabulary can write for the model, the devices and the batch
(`searchspace`): every dp x tp x pp (x cp) up to the device count, the rest idle (no device count
is dominated: a wider dp group may cross a slower link, or need a batch that does not divide),
tp dividing the model's heads and widths, at any level; dp dividing the batch; placed as the
system's compiler would (`compiler.placement`: on Dojo whole tiles and rectangles of chips);
every mb that divides the per-replica batch; every interleave up to blocks + 2 virtual stages,
with the block splits of `plan.stages.planner_splits` (the even and Llama 3's splits, and
uneven ones: first and last virtual stage c - 2 to c blocks, c = ceil(blocks / stages), the rest
even; other splits are not searched, not claimed dominated: 126 blocks have 1e18 splits over 16
stages, and `stages=` writes any for `dojo simulate`); every schedule, recompute and ZeRO stage,
sp on and off. Omitted, because each is dominated (never faster, never smaller) or identical:
- `overlap=off`: every task takes at least as long as with overlap (a blocking send adds to
  it), the pipeline's task ends are monotone in the durations (a task starts at the max of its
  device's previous end and its input's end plus the transfer), and the sync then ends at
  last.end + sync instead of max(last.start + sync, last.end + sync / blocks); memory is the same.
- with pp = 1, `schedule=gpipe` (nothing waits on another device, so both orders take the sum of
  the same tasks, and GPipe holds every micro-batch) and `interleave` > 1 (refused: nothing to
  interleave); `schedule=1f1b` with interleave > 1 is the interleaved schedule.
- with dp = 1, `zero` > 0 (it shards over dp: the same bytes and times); with tp = 1, `sp=on`.
`precision` and `fusion` are held at the caller's values: they say what the software runs (its
number formats; whether a compiler fuses kernels), which a plan of the same step cannot choose.
Context parallelism: for a sequence model, every cp that divides the devices and cuts the
sequence into 2 cp chunks of at least `MIN_CP_TOKENS` / 2 tokens (cp_comm held at p2p). The floor
is a restriction for speed, not a dominance argument: each cp needs its own captures, and below
4,096 tokens per rank a ring step's attention is short against its transfer. Expert parallelism
(MoE models): every ep that divides both dp and the experts; `imbalance` is held at 1.

Bounds, cheapest first; each is a true lower bound (tests check them over whole spaces):
-1. per dp x tp x pp: the state spread evenly over its stages at ZeRO 3 must fit (the fullest
   holds at least that); (batch / dp) x FLOP per sample / (pp x peak), then x op seconds;
0. per split (interleave, split): each stage's state at ZeRO 3 plus `stagemem.least_in_flight`
   must fit; per group (mb): the least first bound of its plans;
1. per plan: its state must fit; `makespan_bounds` on the chunks' op times alone;
2. before compiling it: every stage's bytes from the work (`stagemem.stage_totals`, the compiled
   program's figure); compiled: `simulate.lower_bound` on the exact task durations.
All wait in one queue by bound; the head is expanded, refined or simulated, and the search stops
when the head's bound exceeds the K-th best simulated time. No plan whose bound is below that is
left unsimulated, so the result equals exhaustive enumeration (`exhaustive`; tests compare them,
with idle devices and uneven splits too).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

from dojo.compiler.experts import MoeLayout, ep_gemm, stage_groups
from dojo.compiler.mapping import device_count, device_name, group_levels, leaves_per_device
from dojo.compiler.placement import placement_words
from dojo.compiler.program import PRECISION_BYTES
from dojo.compiler.work import ModelWork
from dojo.errors import DojoError
from dojo.hardware.spec import SystemSpec
from dojo.plan.plan import ModelShape, Plan, plan_split
from dojo.sim.costs import DeviceModel
from dojo.sim.fp8 import fp8_device
from dojo.sim.memory import capacity_of, device_memory, grouped_state, state_memory
from dojo.sim.pipeline import makespan_bounds
from dojo.sim.searchspace import (
    RECOMPUTES,
    Candidate,
    Search,
    chunk_op_times,
    context_sizes,
    context_space,
    device_splits,
    divisors,
    model_flops,
    no_fit_error,
    stage_splits,
    tp_section_times,
    variant_count,
    variants,
    with_all_to_all,
)
from dojo.sim.searchspace import plan_space as plan_space  # the space, for callers and tests
from dojo.sim.session import (
    Simulated,
    _affine_ok,
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
from dojo.sim.stagemem import (
    least_in_flight,
    saved_lows,
    stage_activations,
    stage_experts,
    stage_params,
)

SAFETY = 1 - 1e-9   # bounds add the same seconds in another order than the simulation


def best_plan(model: str, overrides: Mapping[str, Any], spec: SystemSpec, batch: int,
              seq: int | None = None, top: int = 5, precision: str = "bf16",
              fusion: str = "full") -> Search:
    """Search the plan space of `model` on `spec` for global batch `batch` (module docstring)."""
    start = time.perf_counter()
    check_inputs(batch, seq)
    graph, config = captured(model, overrides, 1, seq)
    shape = model_shape(graph, config)
    devices = device_count(spec)
    screen = _Screen(model, overrides, spec, batch, seq)
    cps = context_sizes(model, overrides, seq, devices)
    queue, splits = screen.device_groups(shape, devices, precision, fusion, cps)
    if not splits:
        raise DojoError(f"no plan fits {model} on {spec.name} with batch {batch}: no dp x tp x "
                        f"pp <= {devices}{placement_words(spec)} divides both the model "
                        f"({shape.layers} blocks, {shape.heads} heads) and the batch")
    head = f"no plan fits {model} on {spec.name} with batch {batch}"
    if not queue:
        raise no_fit_error(head, device_name(spec), screen.capacity, screen.least, None)
    found: list[Candidate] = []
    evaluated = considered = 0
    count = itertools.count(len(queue))
    while queue:
        bound, _, index, tier, plan = heapq.heappop(queue)
        if len(found) >= top and bound > found[top - 1].step_time_s:
            break
        worst = found[top - 1].step_time_s if len(found) >= top else float("inf")
        if tier == -2:  # a dp x tp x pp under its FLOP bound: again under its op-time bound
            heapq.heappush(queue, (max(bound, screen._op_bound(plan)), _simplicity(plan),
                                   index, -1, plan))
            continue
        if tier <= -1:  # a dp x tp x pp: its groups (those under the K-th best time)
            for group in screen.groups(plan, shape, devices):
                considered += group[0]
                if group[1] <= worst:
                    heapq.heappush(queue, (*group[1:3], next(count), 0, group[3]))
            continue
        if tier == 0:   # a group: its plans, each with its own first bound
            for variant in variants(plan, shape, devices, batch):
                if screen._state_fits(variant) and screen._first_bound(variant) <= worst:
                    heapq.heappush(queue, (screen._first_bound(variant), _simplicity(variant),
                                           next(count), 1, variant))
            continue
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
        raise no_fit_error(head, device_name(spec), screen.capacity, None, screen.closest)
    fitting = {_family(c.plan) for c in found}
    rejected = tuple((f, r) for f, r in screen.rejected.items() if f not in fitting)
    return Search(best=found[0], candidates=tuple(found[:top]), rejected=rejected,
                  search_s=time.perf_counter() - start, evaluated=evaluated,
                  considered=considered)


def _family(plan: Plan) -> str:
    cp = f",cp={plan.cp}" if plan.cp > 1 else ""
    ep = f",ep={plan.ep}" if plan.ep > 1 else ""
    return f"tp={plan.tp}{cp},pp={plan.pp}{ep},recompute={plan.recompute},zero={plan.zero}"


def _simplicity(p: Plan) -> tuple[int, ...]:
    """Fewer moving parts first: no recompute, no ZeRO, less tp and pp, 1F1B, no sp, the
    default split, fewer devices."""
    return (RECOMPUTES.index(p.recompute), p.zero, p.tp, p.cp, p.ep, p.pp, p.interleave,
            int(p.schedule == "gpipe"), int(p.sp), p.mb, int(bool(p.stages)), p.devices)


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
        self.least: tuple[float, Plan] | None = None   # the least state per device seen
        self.closest: tuple[float, int, Plan] | None = None   # the least bytes per device seen
        self._activations: dict[tuple[Any, ...], list[float]] = {}
        self._state_bytes: dict[tuple[Any, ...], list[float]] = {}
        self._times: dict[tuple[Any, ...], tuple[list[float], list[float]]] = {}

    def device_groups(self, shape: ModelShape, devices: int, precision: str, fusion: str,
                      cps: tuple[int, ...] = (1,)
                      ) -> tuple[list[tuple[float, Any, int, int, Plan]], int]:
        """A heap of the space's dp x tp x pp (tier -1), each under `_device_bound`, and how
        many there are before memory drops any. One whose state does not fit even spread evenly
        over its stages at ZeRO 3 is dropped: every plan of it holds at least that on its
        fullest stage (state is linear in the parameters)."""
        queue: list[tuple[float, Any, int, int, Plan]] = []
        splits = 0
        for cp in cps:
            for tp, pp, dp in device_splits(shape, devices, self.args[3], self.args[2], cp):
                splits += 1
                plan = Plan(dp=dp, tp=tp, pp=pp, cp=cp, precision=precision, fusion=fusion)
                if not self._even_state_fits(plan):
                    continue
                queue.append((self._device_bound(plan), _simplicity(plan), len(queue), -2,
                              plan))
        heapq.heapify(queue)
        return queue, splits

    def groups(self, split: Plan, shape: ModelShape, devices: int
               ) -> Iterator[tuple[int, float, Any, Plan]]:
        """The groups of one dp x tp x pp (one per interleave, split and mb; tier 0) as (plans
        in it, the least first bound of its plans (recompute=none adds nothing; sp on and off),
        simplicity, group). A split family whose state does not fit even at ZeRO 3 is dropped
        whole: every plan of it holds at least that state."""
        batch = self.args[3]
        for inter in (v for v in range(1, shape.layers + 3) if split.pp > 1 or v == 1):
            for stages in stage_splits(shape.layers, split.pp * inter):
                base = replace(split, interleave=inter, stages=stages)
                if not self._family_fits(replace(base, zero=3 if split.dp > 1 else 0)):
                    continue
                for mb in divisors(batch // split.dp):
                    plan = replace(base, mb=mb)
                    n = variant_count(plan, shape, devices, batch)
                    if n:
                        bound = min(self._first_bound(replace(plan, sp=sp))
                                    for sp in ((False, True) if split.tp > 1 else (False,)))
                        yield n, bound, _simplicity(plan), plan

    def _family_fits(self, plan: Plan) -> bool:
        """The state of each stage at ZeRO 3 plus `stagemem.least_in_flight` within capacity:
        a bound on every plan of this dp x tp x pp x interleave x split."""
        if not self._state_fits(plan):
            return False
        work = self._work(plan, 2)
        lows = [self._saved_lows(replace(plan, sp=sp)) for sp in
                ((False, True) if plan.tp > 1 else (False,))]
        per_micro = tuple(min(low[0][i] for low in lows) for i in range(3))
        per_sample = tuple(min(low[1][i] for low in lows) for i in range(3))
        act = least_in_flight(plan_split(plan, work.repeat) if work.block else None, plan.pp,
                              plan.interleave, per_micro, per_sample,  # type: ignore[arg-type]
                              self.args[3] / plan.dp)
        state = self._state_bytes[self._state_key(plan)]
        return all(st + a <= self.capacity for st, a in zip(state, act))

    def _saved_lows(self, plan: Plan) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """`stagemem.saved_lows` of this tp, sp, cp and precision; zeros (no bound) when the
        captures are not affine in mb, for MoE models (ep changes the experts' bytes) and under
        fp8 (its activations are a pass over the work)."""
        key = ("saved", plan.tp, plan.sp, plan.precision, plan.fusion, plan.cp)
        if key not in self._sums:
            works = [self._work(plan, mb) for mb in (1, 2, 3)] \
                if self._affine(plan) and plan.precision != "fp8" else None
            micro, sample = saved_lows(works, RECOMPUTES)
            self._sums[key] = (*micro, *sample)
        lows = self._sums[key]
        return lows[:3], lows[3:]

    def _device_bound(self, plan: Plan) -> float:
        """A bound on every plan of this dp x tp x pp, whatever its mb, interleave and split:
        the first bound is at least micro x (the stages' summed work) / pp, and the summed
        work of a micro-batch of mb samples at least its FLOP / peak (no op beats the peak:
        `DeviceModel.matrix_time`); FLOP per sample at least `_flops_per_sample`."""
        dev = self._device(plan.precision)
        peak = max(dev.peak_flops, dev.vector_flops)
        per_sample = min(self._flops_per_sample(replace(plan, sp=sp))
                         for sp in ((False, True) if plan.tp > 1 else (False,)))
        return self.args[3] / plan.dp * per_sample / (plan.pp * peak) * SAFETY

    def _op_bound(self, plan: Plan) -> float:
        """A bound on every plan of this dp x tp x pp: the first bound is at least micro x the
        model's op seconds per micro-batch (all stages, recompute none) / pp, at the best mb and
        sp (0 for MoE models: an ep rank runs part of the experts' work)."""
        if self._layout(plan, 2) is not None:
            return 0.0
        batch, best = self.args[3], float("inf")
        for mb in divisors(batch // plan.dp):
            for sp in (False, True) if plan.tp > 1 else (False,):
                fwd, bwd = self._chunk_times(replace(plan, mb=mb, sp=sp, interleave=1, pp=1,
                                                     stages=()))
                best = min(best, batch // (plan.dp * mb) * (fwd[0] + bwd[0]) / plan.pp)
        return best * SAFETY

    def _flops_per_sample(self, plan: Plan) -> float:
        """The least FLOP per sample of one device's forward and backward over all its
        chunks, at any micro-batch: the work's FLOP are affine in mb from mb = 2 on
        (`session.graph_at`), so FLOP / mb lies between its value at 2 and the slope; at mb 1
        it is captured. 0 (no bound) when the captures are not affine, for MoE models (an ep
        rank runs part of the experts' FLOP) and with cp (a ring step's work)."""
        key = ("flops", plan.tp, plan.sp, plan.precision, plan.cp)
        if key not in self._sums:
            if not self._affine(plan) or plan.cp > 1:   # a ring's work: no bound
                self._sums[key] = (0.0,)
            else:
                f1, f2, f3 = (model_flops(self._work(plan, mb)) for mb in (1, 2, 3))
                self._sums[key] = (max(0.0, min(f1, f2 / 2, f3 - f2)),)
        return self._sums[key][0]

    def _affine(self, plan: Plan) -> bool:
        """Whether the work is affine in mb (`session.graph_at`) and no MoE layer's."""
        model, overrides, _, _, seq = self.args
        local = context_seq(model, overrides, plan, seq)
        return _affine_ok(model, overrides, local) and self._layout(plan, 2) is None

    def _even_state_fits(self, plan: Plan) -> bool:
        """The state of the whole model spread evenly over pp stages at ZeRO 3 within
        capacity (a bound on every plan of this dp x tp x pp)."""
        work = self._work(plan, 2)
        per_param = work.optimizer_state_bytes / max(1, work.param_count)
        total = work.pre.params + work.post.params + (
            work.block.params * work.repeat if work.block else 0)
        sharded = replace(plan, zero=3 if plan.dp > 1 else 0)
        need = sum(state_memory(sharded, total / (plan.pp * plan.tp), per_param))
        if self.least is None or need < self.least[0]:
            self.least = (need, sharded)
        return need <= self.capacity

    def refine(self, plan: Plan) -> float | None:
        """The second bound, or None (and the reason recorded) if the plan does not fit."""
        spec, batch = self.args[2], self.args[3]
        if self._layout(plan) is not None:   # ep reshapes the experts' bytes: compile
            return self._compiled_bound(plan)
        key = (plan.mb, plan.tp, plan.sp, plan.pp, plan.interleave, plan.recompute,
               plan.stages, plan.dp, plan.schedule, plan.precision)
        if key not in self._activations:
            self._activations[key] = stage_activations(self._work(plan), plan, batch)
        self._state_fits(plan)   # its state per stage (`stage_totals` without experts)
        totals = [st + a for st, a in zip(self._state_bytes[self._state_key(plan)],
                                          self._activations[key])]
        worst = max(range(plan.pp), key=lambda s: totals[s])
        if self.closest is None or totals[worst] < self.closest[0]:
            self.closest = (totals[worst], worst, plan)
        if totals[worst] > self.capacity * (1 + 1e-9):
            # the compiled program's bytes from the work alone (`stagemem`; cp's ring buffers
            # would only add): it cannot fit
            self.rejected.setdefault(_family(plan), (
                f"stage {worst} needs {totals[worst] / 1e9:.2f} GB per {device_name(spec)} "
                f"> capacity {self.capacity / 1e9:.2f} GB"))
            return None
        return self._compiled_bound(plan)

    def _compiled_bound(self, plan: Plan) -> float | None:
        """`simulate.lower_bound` of the compiled plan, or None if its memory does not fit."""
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

    def _state_key(self, plan: Plan) -> tuple[Any, ...]:
        return (plan.tp, plan.pp, plan.interleave, plan.zero, plan.dp, plan.precision, plan.cp,
                plan.ep, plan.stages)

    def _state_fits(self, plan: Plan) -> bool:
        """Weights, gradients and optimizer state of the fullest stage within capacity."""
        key = self._state_key(plan)
        if key not in self._state:
            work = self._work(plan, 2)
            per_param = work.optimizer_state_bytes / max(1, work.param_count)
            experts = stage_experts(work, plan, self._layout(plan, 2))
            state = [sum(grouped_state(plan, stage_groups(plan, params, ex), per_param))
                     for params, ex in zip(stage_params(work, plan), experts)]
            self._state_bytes[key] = state
            worst = max(range(plan.pp), key=lambda s: state[s])
            self._state[key] = state[worst] <= self.capacity
            if self.least is None or state[worst] < self.least[0]:
                self.least = (state[worst], plan)
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
               plan.ep, plan.stages, plan.dp, plan.precision)
        if key not in self._bounds:
            fwd, bwd = self._chunk_times(plan)
            micro = self.args[3] // (plan.dp * plan.mb)
            ends, tails = makespan_bounds(plan.pp, micro, fwd, bwd, 0.0)
            self._bounds[key] = max(e + t for e, t in zip(ends, tails)) * SAFETY
        return self._bounds[key]

    def _chunk_times(self, plan: Plan) -> tuple[list[float], list[float]]:
        """Op seconds per virtual stage, plus the tp collectives every task waits for (as
        `simulate.chunk_times` times them without tp_overlap; dense models); cached."""
        key = (plan.mb, plan.tp, plan.sp, plan.pp, plan.interleave, plan.recompute, plan.cp,
               plan.ep, plan.stages, plan.precision)
        if key in self._times:
            return self._times[key]
        work = self._work(plan)
        sums = self._section_sums(plan)
        if plan.tp > 1 and not plan.tp_overlap and self._layout(plan) is None:
            sums = tuple(a + b for a, b in zip(sums, self._tp_sums(plan, work)))
        split = plan_split(plan, work.repeat) if work.block else None
        fwd, bwd = chunk_op_times(sums, split, plan.pp * plan.interleave, plan.recompute)
        self._times[key] = with_all_to_all(self.args[2], self._device(plan.precision)
                                           .calibration, plan, work, self._layout(plan), split,
                                           fwd, bwd)
        return self._times[key]

    def _tp_sums(self, plan: Plan, work: ModelWork) -> tuple[float, ...]:
        """Seconds of the sections' tp collectives on the tp group's levels, in the order of
        `_section_sums` (a full recompute reruns the block's forward collectives)."""
        key = ("tp", plan.mb, plan.tp, plan.sp, plan.cp, plan.precision)
        if key not in self._sums:
            spec = self.args[2]
            self._sums[key] = tp_section_times(work, spec, self._device(plan.precision)
                                               .calibration, group_levels(spec, plan.tp, 1))
        return self._sums[key]

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


def exhaustive(model: str, overrides: Mapping[str, Any], spec: SystemSpec, batch: int,
               seq: int | None = None, precision: str = "bf16") -> Candidate:
    """Simulate every plan of the space, each from its own capture (the reference the search
    is tested against)."""
    graph, config = captured(model, overrides, 1, seq)
    shape = model_shape(graph, config)
    best: Candidate | None = None
    devices = device_count(spec)
    cps = context_sizes(model, overrides, seq, devices)
    for plan in context_space(shape, devices, batch, cps, precision, spec=spec):
        sim = simulate_model(model, overrides, spec, plan, batch, seq)
        if not sim.result.memory.fits:
            continue
        cand = Candidate(plan, sim.result.step_time_s, sim.result.mfu, True, sim)
        if best is None or _preference(cand) < _preference(best):
            best = cand
    if best is None:
        raise DojoError(f"no plan fits {model} on {spec.name}")
    return best
