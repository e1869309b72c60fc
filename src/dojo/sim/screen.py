"""The plan search's bounds (`dojo.sim.search` states them and why the search stays exact),
with what they share cached: one `_Screen` per search.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Mapping
from typing import Any

from dojo.compiler.experts import MoeLayout, ep_gemm
from dojo.compiler.mapping import device_name, group_levels, leaves_per_device
from dojo.compiler.program import PRECISION_BYTES
from dojo.compiler.work import ModelWork
from dojo.hardware.spec import SystemSpec
from dojo.plan.plan import ModelShape, Plan, plan_split
from dojo.sim.costs import DeviceModel
from dojo.sim.fp8 import fp8_device
from dojo.sim.memory import capacity_of, device_memory, state_memory
from dojo.sim.pipeline import makespan_bounds
from dojo.sim.searchspace import (
    RECOMPUTES,
    chunk_op_times,
    device_splits,
    divisors,
    expert_sizes,
    model_flops,
    schedules_of,
    stage_splits,
    tp_section_times,
    variant_count,
    with_all_to_all,
)
from dojo.sim.session import (
    _affine_ok,
    compile_model,
    context_seq,
    experts_of,
    fuses_attention,
    graph_at,
    work_for,
)
from dojo.sim.simulate import device_for, lower_bound
from dojo.sim.stagemem import least_in_flight, saved_lows, stage_activations, stage_state

SAFETY = 1 - 1e-9   # bounds add the same seconds in another order than the simulation


def replace(plan: Plan, **changes: Any) -> Plan:
    """`dataclasses.replace` for a `Plan` without its generated __init__ (20 frozen
    setattrs, with no __post_init__ to run): the search builds millions of plans, and this
    was a fifth of its time on DeepSeek-V3. Same fields, equality and hash."""
    new = object.__new__(Plan)
    new.__dict__.update(plan.__dict__, **changes)
    return new


def _family(plan: Plan) -> str:
    cp = f",cp={plan.cp}" if plan.cp > 1 else ""
    ep = f",ep={plan.ep}" if plan.ep > 1 else ""
    return f"tp={plan.tp}{cp},pp={plan.pp}{ep},recompute={plan.recompute},zero={plan.zero}"


def _simplicity(p: Plan) -> tuple[int, ...]:
    """Fewer moving parts first: no recompute, no ZeRO, less tp and pp, 1F1B, no sp, the
    default split, fewer devices."""
    return (RECOMPUTES.index(p.recompute), p.zero, p.tp, p.cp, p.ep, p.pp, p.interleave,
            int(p.schedule == "gpipe"), int(p.sp), p.mb, int(bool(p.stages)), p.devices)


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
        self._mb_terms: dict[tuple[Any, ...], dict[int, float]] = {}
        self._a2a: dict[tuple[Any, ...], tuple[float, bool]] = {}

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
                if self._even_state(plan) > self.capacity:
                    continue
                queue.append((self._device_bound(plan), _simplicity(plan), len(queue), -2,
                              plan))
        heapq.heapify(queue)
        return queue, splits

    def groups(self, split: Plan, shape: ModelShape, devices: int, worst: float = math.inf
               ) -> Iterator[tuple[int, float, Any, Plan]]:
        """The groups of one dp x tp x pp (one per interleave, split and mb; tier 0) as (plans
        in it, the least first bound of its plans (recompute=none adds nothing; sp on and off),
        simplicity, group). A split family whose state does not fit even at ZeRO 3 is dropped
        whole: every plan of it holds at least that state; so is an mb whose `_op_bound` term
        exceeds `worst` (the K-th best time): it bounds every group of that mb."""
        batch = self.args[3]
        self._op_bound(split)   # the terms per mb
        terms = self._mb_terms.get(self._split_key(split), {})
        for inter in (v for v in range(1, shape.layers + 3) if split.pp > 1 or v == 1):
            for stages in stage_splits(shape.layers, split.pp * inter):
                base = replace(split, interleave=inter, stages=stages)
                if not self._family_fits(replace(base, zero=3 if split.dp > 1 else 0)):
                    continue
                for mb in divisors(batch // split.dp):
                    if terms.get(mb, 0.0) > worst:
                        continue
                    plan = replace(base, mb=mb)
                    n = variant_count(plan, shape, devices, batch)
                    if n:
                        bound = min(self._first_bound(replace(plan, sp=sp))
                                    for sp in ((False, True) if split.tp > 1 else (False,)))
                        yield n, bound, _simplicity(plan), plan

    def plans(self, group: Plan, shape: ModelShape, devices: int, worst: float
              ) -> Iterator[tuple[float, Plan]]:
        """The plans of a group (`searchspace.variants`) whose state fits and whose first
        bound is at most `worst`, with that bound. No schedule or ZeRO stage changes the first
        bound, so it is taken once per (recompute, sp, ep) before their plans are built."""
        batch = self.args[3]
        for schedule in schedules_of(group, shape, devices, batch):
            for rec in RECOMPUTES:
                for sp in (False, True) if group.tp > 1 else (False,):
                    for ep in expert_sizes(shape, group.dp):
                        probe = replace(group, schedule=schedule, recompute=rec, sp=sp, ep=ep)
                        bound = self._first_bound(probe)
                        if bound > worst:
                            continue
                        for zero in (0, 1, 2, 3) if group.dp > 1 else (0,):
                            plan = replace(probe, zero=zero)
                            if self._state_fits(plan):
                                yield bound, plan

    def _family_fits(self, plan: Plan) -> bool:
        """`_family_bytes` within capacity on every stage (the state at ep = 1 first, for the
        reason it records)."""
        self._state_fits(plan)
        return all(b <= self.capacity for b in self._family_bytes(plan))

    def _family_bytes(self, plan: Plan) -> list[float]:
        """Per stage, bytes below those of every plan of this dp x tp x pp x interleave x split
        (`plan` at ZeRO 3 where dp > 1): the least state over its ep (ZeRO 3 shards it least;
        ep moves whole // ep of the experts, a hair under whole / ep) plus
        `stagemem.least_in_flight` (activations: ep leaves the saved bytes as they are)."""
        states = [self._stage_state(replace(plan, ep=ep)) for ep in self._expert_sizes(plan)]
        work = self._work(plan, 2)
        lows = [self._saved_lows(replace(plan, sp=sp)) for sp in
                ((False, True) if plan.tp > 1 else (False,))]
        per_micro = tuple(min(low[0][i] for low in lows) for i in range(3))
        per_sample = tuple(min(low[1][i] for low in lows) for i in range(3))
        act = least_in_flight(plan_split(plan, work.repeat) if work.block else None, plan.pp,
                              plan.interleave, per_micro, per_sample,  # type: ignore[arg-type]
                              self.args[3] / plan.dp)
        return [min(st[s] for st in states) + act[s] for s in range(plan.pp)]

    def _expert_sizes(self, plan: Plan) -> list[int]:
        """The ep the space pairs with this dp (`searchspace.expert_sizes`)."""
        layout = self._layout(plan, 2)
        return [e for e in divisors(plan.dp) if layout.experts % e == 0] if layout else [1]

    def _saved_lows(self, plan: Plan) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """`stagemem.saved_lows` of this tp, sp, cp and precision; zeros (no bound) when the
        captures are not affine in mb and under fp8 (its activations are a pass over the
        work)."""
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
        sp (0 for MoE models: the least over every ep costs more than it saves)."""
        if self._layout(plan, 2) is not None:
            return 0.0
        key = self._split_key(plan)
        if key not in self._mb_terms:   # per mb: micro x its op seconds / pp
            batch, terms = self.args[3], dict[int, float]()
            for mb in divisors(batch // plan.dp):
                for sp in (False, True) if plan.tp > 1 else (False,):
                    fwd, bwd = self._chunk_times(replace(plan, mb=mb, sp=sp, interleave=1, pp=1,
                                                         stages=()))
                    term = batch // (plan.dp * mb) * (fwd[0] + bwd[0]) / plan.pp * SAFETY
                    terms[mb] = min(terms.get(mb, math.inf), term)
            self._mb_terms[key] = terms
        return min(self._mb_terms[key].values())

    @staticmethod
    def _split_key(plan: Plan) -> tuple[Any, ...]:
        return (plan.dp, plan.tp, plan.pp, plan.cp, plan.precision, plan.fusion)

    def _flops_per_sample(self, plan: Plan) -> float:
        """The least FLOP per sample of one device's forward and backward over all its
        chunks, at any micro-batch: the work's FLOP are affine in mb from mb = 2 on
        (`session.graph_at`), so FLOP / mb lies between its value at 2 and the slope; at mb 1
        it is captured. 0 (no bound) when the captures are not affine and with cp (a ring
        step's work)."""
        key = ("flops", plan.tp, plan.sp, plan.precision, plan.cp)
        if key not in self._sums:
            if not self._affine(plan) or plan.cp > 1:   # a ring's work: no bound
                self._sums[key] = (0.0,)
            else:
                f1, f2, f3 = (model_flops(self._work(plan, mb)) for mb in (1, 2, 3))
                self._sums[key] = (max(0.0, min(f1, f2 / 2, f3 - f2)),)
        return self._sums[key][0]

    def _affine(self, plan: Plan) -> bool:
        """Whether the work is affine in mb (`session.graph_at`). An MoE model's counts: its
        work (before `experts.ep_work`) is what every ep runs in FLOP and saves in bytes
        (`ep_gemm` keeps each GEMM's FLOP, `imbalance` is held at 1, and `ep_work` leaves
        the sections' saved bytes as they are)."""
        model, overrides, _, _, seq = self.args
        return _affine_ok(model, overrides, context_seq(model, overrides, plan, seq))

    def _even_state(self, plan: Plan) -> float:
        """Bytes of the whole model's state spread evenly over pp stages at ZeRO 3: a bound
        below the fullest stage's bytes of every plan of this dp x tp x pp. With ep a virtual
        stage keeps whole // ep >= whole / ep - 1 of its experts, so at ZeRO 3 a stage holds at
        most one parameter per virtual stage (at most blocks + 2) less than at ep = 1."""
        work = self._work(plan, 2)
        per_param = work.optimizer_state_bytes / max(1, work.param_count)
        total = work.pre.params + work.post.params + (
            work.block.params * work.repeat if work.block else 0)
        if self._layout(plan, 2) is not None:
            total -= plan.pp * (work.repeat + 2)
        sharded = replace(plan, zero=3 if plan.dp > 1 else 0)
        need = sum(state_memory(sharded, total / (plan.pp * plan.tp), per_param))
        if self.least is None or need < self.least[0]:
            self.least = (need, sharded)
        return need

    def refine(self, plan: Plan) -> float | None:
        """The second bound, or None (and the reason recorded) if the plan does not fit."""
        spec, batch = self.args[2], self.args[3]
        key = (plan.mb, plan.tp, plan.sp, plan.pp, plan.interleave, plan.recompute,
               plan.stages, plan.dp, plan.schedule, plan.precision, plan.cp)
        if key not in self._activations:
            self._activations[key] = stage_activations(self._work(plan), plan, batch)
        self._state_fits(plan)   # its state per stage (`stagemem.stage_state`)
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

    def _stage_state(self, plan: Plan) -> list[float]:
        """`stagemem.stage_state` of the plan (bytes per stage), cached."""
        key = self._state_key(plan)
        if key not in self._state_bytes:
            work = self._work(plan, 2)
            per_param = work.optimizer_state_bytes / max(1, work.param_count)
            self._state_bytes[key] = stage_state(work, plan, self._layout(plan, 2), per_param)
        return self._state_bytes[key]

    def _state_fits(self, plan: Plan) -> bool:
        """Weights, gradients and optimizer state of the fullest stage within capacity."""
        key = self._state_key(plan)
        if key not in self._state:
            state = self._stage_state(plan)
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
        `simulate.chunk_times` times them without tp_overlap; dense models); cached for
        pp = 1 only (a pipeline's lists hold up to 2 (blocks + 2) floats per key, over ~10^5
        keys on the largest spaces; `_first_bound` keeps their bound)."""
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
        times = with_all_to_all(self.args[2], self._device(plan.precision).calibration, plan,
                                work, self._layout(plan), split, fwd, bwd, self._a2a)
        if plan.pp == 1:   # the op bound's, asked per dp; a pipeline's: its bound is kept
            self._times[key] = times
        return times

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
