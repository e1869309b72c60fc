"""The plan search's bounds (`dojo.sim.search` states them and why the search stays exact),
with what they share cached: one `_Screen` per search.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator, Mapping
from typing import Any

from dojo.compiler.experts import MoeLayout
from dojo.compiler.mapping import device_name
from dojo.compiler.program import Program
from dojo.compiler.work import ModelWork
from dojo.graph import Graph
from dojo.hardware.spec import SystemSpec
from dojo.plan.plan import ModelShape, Plan, plan_split
from dojo.sim.costs import DeviceModel
from dojo.sim.memory import capacity_of, device_memory, state_memory
from dojo.sim.searchspace import (
    RECOMPUTES,
    Bundle,
    _family,
    _simplicity,
    device_splits,
    divisors,
    expert_sizes,
    group_sizes,
    model_flops,
    schedules_of,
    stage_splits,
    variant_count,
)
from dojo.sim.searchspace import fast_replace as replace
from dojo.sim.session import (
    _affine_ok,
    compile_model,
    context_seq,
)
from dojo.sim.simulate import Prepared, prepare
from dojo.sim.stagemem import (
    chunk_saved,
    fewest_in_flight,
    least_in_flight,
    saved_lows,
    stage_activations,
    stage_held,
    stage_state,
)
from dojo.sim.stepbound import lower_bound
from dojo.sim.timebounds import SAFETY, Parts, Profile, TimeBounds, room

KEPT_PROGRAMS = 32   # compiled programs kept from their bound for their simulation


class _Screen(TimeBounds):
    """The bounds of the module docstring, with what they share cached."""

    def __init__(self, model: str, overrides: Mapping[str, Any], spec: SystemSpec,
                 batch: int, seq: int | None) -> None:
        self.args = (model, overrides, spec, batch, seq)
        self.rejected: dict[str, str] = {}
        self.capacity = capacity_of(spec)[0]
        self._dev: dict[tuple[str, str], DeviceModel] = {}
        self._sums: dict[tuple[Any, ...], tuple[float, ...]] = {}
        self._bounds: dict[tuple[Any, ...], float] = {}
        self._state: dict[tuple[Any, ...], bool] = {}
        self._layouts: dict[tuple[int, int], MoeLayout | None] = {}
        self.least: tuple[float, Plan] | None = None   # the least state per device seen
        self.closest: tuple[float, int, Plan] | None = None   # the least bytes per device seen
        self._activations: dict[tuple[Any, ...], list[float]] = {}
        self._state_bytes: dict[tuple[Any, ...], list[float]] = {}
        self._least: dict[tuple[Any, ...], list[float]] = {}
        self._held: dict[tuple[Any, ...], list[list[float]]] = {}
        self._times: dict[tuple[Any, ...], Parts] = {}
        self._profiles: dict[tuple[Any, ...], Profile] = {}
        self._streams: dict[tuple[Any, ...], Any] = {}
        # bounded, for `best_plan`: with what `simulate` starts from
        self.compiled: dict[Plan, tuple[Program, Graph, Prepared]] = {}
        self._mb_terms: dict[tuple[Any, ...], dict[int, float]] = {}
        self._a2a: dict[tuple[Any, ...], tuple[float, bool]] = {}
        self._terms: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._works: dict[tuple[Any, ...], ModelWork] = {}

    def device_groups(self, shape: ModelShape, devices: int, precision: str, fusion: str,
                      cps: tuple[int, ...] = (1,)
                      ) -> tuple[list[tuple[float, Any, int, int, Any]], int]:
        """A heap of the space's dp x tp x pp (tier -1), each under `_device_bound`, and how
        many there are before memory drops any. One whose state does not fit even spread evenly
        over its stages at ZeRO 3 is dropped: every plan of it holds at least that on its
        fullest stage (state is linear in the parameters)."""
        queue: list[tuple[float, Any, int, int, Any]] = []   # the payload: Plan or Bundle
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
        in it, a bound below every plan of it, simplicity, group): its mb's `_op_bound` term,
        and micro x `_stream_floor` (`group_bound` refines it when the group comes up). A split
        family whose state does not fit even at ZeRO 3 is dropped whole: every plan of it holds
        at least that state; so is an mb whose `_op_bound` term exceeds `worst` (the K-th best
        time): it bounds every group of that mb."""
        batch = self.args[3]
        self._op_bound(split)   # the terms per mb
        terms = self._mb_terms.get(self._split_key(split), {})
        for inter in (v for v in range(1, shape.layers + 3) if split.pp > 1 or v == 1):
            for stages in stage_splits(shape.layers, split.pp * inter):
                base = replace(split, interleave=inter, stages=stages)
                family = replace(base, zero=3 if split.dp > 1 else 0)
                if not self._family_fits(family):
                    continue
                parts, floor = self._family_parts(family), -1.0
                mbs = divisors(batch // split.dp)
                for mb in mbs[:self._fitting_mbs(family, mbs, parts)]:
                    if terms.get(mb, 0.0) > worst:
                        continue
                    plan = replace(base, mb=mb)
                    n = variant_count(plan, shape, devices, batch)
                    if n:
                        floor = self._stream_floor(base) if floor < 0 else floor
                        bound = max(terms.get(mb, 0.0), batch // (split.dp * mb) * floor)
                        yield n, bound, _simplicity(plan), plan

    def _fitting_mbs(self, family: Plan, mbs: list[int], parts: tuple[Any, ...]) -> int:
        """How many of the ascending `mbs` pass the per-mb memory screen (`_family_fits`),
        found by bisection: `_family_bytes` is nondecreasing in mb (a micro-batch of mb samples
        is held at max(its least bytes, mb x a sample's), the rest does not depend on mb), so
        the mbs that pass are a prefix."""
        low, high = 0, len(mbs)   # mbs[:low] pass, mbs[high:] do not
        while low < high:
            mid = (low + high) // 2
            if self._family_fits(family, mbs[mid], parts):
                low = mid + 1
            else:
                high = mid
        return low

    def group_bound(self, group: Plan, shape: ModelShape, devices: int, worst: float = math.inf
                    ) -> float:
        """The least first bound of a group's plans: recompute none (a recompute only adds),
        over sp and ep, at ZeRO 0 where some ZeRO stage below 3 fits at that ep (the stages
        below 3 share the first bound) and at ZeRO 3 where it fits; inf where no plan of the
        group fits (`_group_fits`, asked of an MoE model's group when the bound is at most
        `worst`: there ep multiplies the plans it saves building and screening one by one;
        a dense group's plans cost less to screen than its 12 activation walks)."""
        least = math.inf
        for ep in self._expert_sizes(group):
            if self._state_within(group, 2 if group.dp > 1 else 0, ep):
                zero = 0   # ZeRO 3's bound is at least ZeRO 0-2's (the stream only adds)
            elif group.dp > 1 and self._state_within(group, 3, ep):
                zero = 3
            else:
                continue
            for sp in (False, True) if group.tp > 1 else (False,):
                least = min(least, self._first_bound(replace(group, sp=sp, ep=ep, zero=zero)))
        if least <= worst and self._layout(group, 2) is not None and \
                not self._group_fits(group, shape, devices):
            return math.inf   # asked for MoE models: ep multiplies a group's plans
        return least

    def _group_fits(self, group: Plan, shape: ModelShape, devices: int) -> bool:
        """Whether some plan of the group may fit: on every stage, the least state of the
        family (`_family_bytes`'s, ZeRO 3 at its least ep) plus the least activations in
        flight over the group's schedules, recompute policies, sp and micro-batch groups
        (`_least_activations`) within capacity. Each plan holds at least that sum. The least
        so far is checked after each policy, the smallest-saving first: once it fits, the
        least over all of them (no larger) fits."""
        state = self._least_state(replace(group, zero=3 if group.dp > 1 else 0))
        least: list[float] | None = None
        for schedule in schedules_of(group, shape, devices, self.args[3]):
            for rec in reversed(RECOMPUTES):
                for sp in (True, False) if group.tp > 1 else (False,):
                    acts = self._least_activations(replace(group, schedule=schedule,
                                                           recompute=rec, sp=sp))
                    least = acts if least is None else list(map(min, least, acts))
                    if all(st + a <= self.capacity * (1 + 1e-9) for st, a in zip(state, least)):
                        return True
        return least is None

    def plans(self, group: Plan, shape: ModelShape, devices: int, worst: float
              ) -> Iterator[tuple[float, Plan, Bundle]]:
        """The plans of a group (`searchspace.variants`) whose state fits and whose first
        bound is at most `worst`, as (that bound, the simplest plan, its `Bundle`): no
        schedule or `vp_group` changes the first bound and ZeRO only at 3, so it is taken
        once per (recompute, sp, ep, ZeRO 3 or not), and the state once per (ep, ZeRO). Most
        bundles never reach the queue's head, so their plans are built only when one does
        (`searchspace.bundle_plans`); a plan of a smaller group waits under `_order_bound`
        once its memory fits (`best_plan`)."""
        batch = self.args[3]
        zeros = (0, 1, 2, 3) if group.dp > 1 else (0,)
        sizes = tuple(group_sizes(group.pp, group.interleave, batch // (group.dp * group.mb)))
        schedules = tuple(s for s in schedules_of(group, shape, devices, batch)
                          if s != "interleaved" or sizes)
        if not schedules:
            return
        for ep in expert_sizes(shape, group.dp):
            low = self._state_within(group, zeros[-1] if len(zeros) == 1 else 2, ep)
            high = len(zeros) > 1 and self._state_within(group, 3, ep)
            if not (low or high):
                continue
            fits: dict[int, bool] = {}
            over: set[bool] = set()   # the sp whose bound without recompute is over `worst`
            for rec, sp in itertools.product(RECOMPUTES, (False, True) if group.tp > 1
                                             else (False,)):
                if sp in over:   # a recompute only adds to every backward (RECOMPUTES[0]: none)
                    continue
                probe = replace(group, recompute=rec, sp=sp, ep=ep)
                below = self._first_bound(probe)   # ZeRO 3's is at least this
                if below > worst:
                    if rec == RECOMPUTES[0]:
                        over.add(sp)
                    continue
                parts = ([z for z in zeros if z < 3], [z for z in zeros if z == 3]) if low \
                    else ([3],)   # ZeRO 3 is in `zeros` only with dp > 1
                for part in (p for p in parts if p):
                    bound = below if part[0] < 3 else self._first_bound(replace(probe, zero=3))
                    if bound > worst:
                        continue
                    for zero in part:
                        if zero not in fits:
                            fits[zero] = self._state_fits(replace(probe, zero=zero))
                    kept = tuple(z for z in part if fits[z])
                    if kept:
                        first = replace(probe, zero=kept[0], schedule=schedules[0])
                        yield bound, first, Bundle(probe, kept, schedules, sizes)

    def _state_within(self, plan: Plan, zero: int, ep: int) -> bool:
        """Whether the state at this ZeRO stage and ep fits (`_state_fits` without recording
        a reason: a bound asks it, not a plan)."""
        probe = replace(plan, zero=zero, ep=ep)
        found = self._state.get(self._state_key(probe))
        return max(self._stage_state(probe)) <= self.capacity if found is None else found

    def _family_fits(self, plan: Plan, mb: int = 0, parts: tuple[Any, ...] | None = None
                     ) -> bool:
        """`_family_bytes` within capacity on every stage (the state at ep = 1 first, for the
        reason it records)."""
        if parts is None:
            self._state_fits(plan)
        return all(b <= self.capacity * (1 + 1e-9) for b in self._family_bytes(plan, mb, parts))

    def _family_bytes(self, plan: Plan, mb: int = 0,
                      parts: tuple[Any, ...] | None = None) -> list[float]:
        """Per stage, bytes below those of every plan of this dp x tp x pp x interleave x split
        (`plan` at ZeRO 3 where dp > 1), or of its micro-batch size `mb` (0: any): the least
        state over its ep (ZeRO 3 shards it least; ep moves whole // ep of the experts, a hair
        under whole / ep) plus `stagemem.least_in_flight` (activations: ep leaves the saved
        bytes as they are); a micro-batch of mb samples saves at least mb x the least bytes
        of a sample (`stagemem.saved_lows`). `parts`: the family's `_family_parts`."""
        state, split, micro, sample = parts or self._family_parts(plan)
        per_micro = tuple(max(m, mb * s) for m, s in zip(micro, sample))
        act = least_in_flight(split, plan.pp, plan.interleave, per_micro, sample,
                              self.args[3] / plan.dp)
        return [state[s] + act[s] for s in range(plan.pp)]

    def _family_parts(self, plan: Plan) -> tuple[Any, ...]:
        """(least state per stage, blocks per virtual stage, least saved bytes of a
        micro-batch and of a sample per section) of a family, for `_family_bytes`."""
        work = self._work(plan, 2)
        lows = [self._saved_lows(replace(plan, sp=sp)) for sp in
                ((False, True) if plan.tp > 1 else (False,))]
        return (self._least_state(plan), plan_split(plan, work.repeat) if work.block else None,
                tuple(min(low[0][i] for low in lows) for i in range(3)),
                tuple(min(low[1][i] for low in lows) for i in range(3)))

    def _least_state(self, plan: Plan) -> list[float]:
        """Per stage, the least state of `plan` over the ep its dp pairs with."""
        key = self._state_key(replace(plan, ep=0))
        if key not in self._least:
            states = [self._stage_state(replace(plan, ep=ep)) for ep in self._expert_sizes(plan)]
            room(self._least)
            self._least[key] = [min(st[s] for st in states) for s in range(plan.pp)]
        return self._least[key]

    def _expert_sizes(self, plan: Plan) -> list[int]:
        """The ep the space pairs with this dp (`searchspace.expert_sizes`)."""
        layout = self._layout(plan, 2)
        return [e for e in divisors(plan.dp) if layout.experts % e == 0] if layout else [1]

    def _saved_lows(self, plan: Plan) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """`stagemem.saved_lows` of this tp, sp, cp and precision; zeros (no bound) when the
        captures are not affine in mb and under fp8 (its activations are a pass over the
        work)."""
        key = ("saved", plan.tp, plan.sp, plan.precision, plan.fusion, plan.cp, plan.etp)
        if key not in self._sums:
            works = [self._work(plan, mb) for mb in (1, 2, 3)] \
                if self._affine(plan) and plan.precision != "fp8" else None
            micro, sample = saved_lows(works, RECOMPUTES)
            self._sums[key] = (*micro, *sample)
        lows = self._sums[key]
        return lows[:3], lows[3:]

    def _device_bound(self, plan: Plan) -> float:
        """A bound on every plan of this dp x tp x pp, whatever its mb, interleave and split:
        micro x (the stages' summed work) / pp, a micro-batch's work at least its FLOP / peak (no
        op beats the peak: `DeviceModel.matrix_time`; halved under an `attn` kernel, which runs
        half a causal call's counted FLOPs); FLOP per sample at least `_flops_per_sample`."""
        dev = self._device(plan.precision, plan.attn)
        peak = max(dev.peak_flops, dev.vector_flops) * (1.0 if dev.attention is None else 2.0)
        per_sample = min(self._flops_per_sample(replace(plan, sp=sp))
                         for sp in ((False, True) if plan.tp > 1 else (False,)))
        return self.args[3] / plan.dp * per_sample / (plan.pp * peak) * SAFETY

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
        return self._compiled_bound(plan) if self.fits_memory(plan) else None

    def fits_memory(self, plan: Plan) -> bool:
        """Whether the plan's bytes from the work (`stagemem`, the compiled program's figure;
        cp's ring buffers would only add) fit; the reason recorded when not."""
        state = self._stage_state(plan)
        if plan.pp > 1 and self._act_key(plan) not in self._activations \
                and _family(plan) in self.rejected and self.closest is not None:
            # Stage 0 alone: when it is over capacity and no closer than the closest plan, the
            # whole walk could change neither the answer nor what is recorded (its family's
            # reason is already kept, and the worst stage is at least stage 0).
            first = state[0] + stage_activations(self._work(plan), plan, self.args[3],
                                                 range(1), self._chunk_saved(plan))[0]
            if first > self.capacity * (1 + 1e-9) and first >= self.closest[0]:
                return False
        totals = [st + a for st, a in zip(state, self._stage_activations(plan))]
        worst = max(range(plan.pp), key=lambda s: totals[s])
        if self.closest is None or totals[worst] < self.closest[0]:
            self.closest = (totals[worst], worst, plan)
        if totals[worst] > self.capacity * (1 + 1e-9):
            self.rejected.setdefault(_family(plan), (
                f"stage {worst} needs {totals[worst] / 1e9:.2f} GB per "
                f"{device_name(self.args[2])} > capacity {self.capacity / 1e9:.2f} GB"))
            return False
        return True

    def _least_activations(self, plan: Plan) -> list[float]:
        """Bytes per stage below the activations of the plan at every `vp_group` the search
        writes (`searchspace.group_sizes`): the walk, or for the interleaved schedule
        `stagemem.fewest_in_flight`, below the walk at every N."""
        if plan.schedule != "interleaved":
            return self._stage_activations(plan)
        return fewest_in_flight(self._work(plan), plan, self.args[3])

    def _stage_activations(self, plan: Plan) -> list[float]:
        """`stagemem.stage_activations` of the plan (bytes per stage), cached."""
        key = self._act_key(plan)
        if key not in self._activations:
            room(self._activations)
            self._activations[key] = stage_activations(self._work(plan), plan, self.args[3],
                                                       saved=self._chunk_saved(plan))
        return self._activations[key]

    def _chunk_saved(self, plan: Plan) -> list[float]:
        """`stagemem.chunk_saved` (bytes per virtual stage and micro-batch), cached by what
        it reads: the plan's work, its recompute and split (not its dp, schedule or ZeRO)."""
        key = ("chunk_saved", plan.mb, plan.tp, plan.sp, plan.precision, plan.fusion, plan.cp,
               plan.etp, plan.recompute, plan.pp, plan.interleave, plan.stages)
        found = self._activations.get(key)
        if found is None:
            room(self._activations)
            found = self._activations[key] = chunk_saved(self._work(plan), plan)
        return found

    @staticmethod
    def _act_key(plan: Plan) -> tuple[Any, ...]:
        return (plan.mb, plan.tp, plan.sp, plan.pp, plan.interleave, plan.recompute,
                plan.stages, plan.dp, plan.schedule, plan.precision, plan.cp, plan.vp_group,
                plan.etp)

    def _compiled_bound(self, plan: Plan) -> float | None:
        """`stepbound.lower_bound` of the compiled plan, or None if its memory does not fit;
        the program and what `simulate.prepare` timed are kept for its simulation (the last
        `KEPT_PROGRAMS`: a plan is simulated, if ever, soon after its bound, which puts it at
        the head of the queue)."""
        model, overrides, spec, batch, seq = self.args
        program, graph = compile_model(model, overrides, spec, plan, batch, seq, derive=True)
        memory = device_memory(program, chip_report=False)
        if not memory.fits:
            self.rejected.setdefault(_family(plan), memory.reason)
            return None
        if len(self.compiled) >= KEPT_PROGRAMS:
            del self.compiled[next(iter(self.compiled))]
        prepared = prepare(program, memory)
        self.compiled[plan] = (program, graph, prepared)
        return lower_bound(program, prepared=prepared) * SAFETY

    def _state_key(self, plan: Plan) -> tuple[Any, ...]:
        return (plan.tp, plan.pp, plan.interleave, plan.zero, plan.dp, plan.precision, plan.cp,
                plan.ep, plan.stages, plan.etp)

    def _stage_state(self, plan: Plan) -> list[float]:
        """`stagemem.stage_state` of the plan (bytes per stage), cached."""
        key = self._state_key(plan)
        if key not in self._state_bytes:
            work, layout = self._work(plan, 2), self._layout(plan, 2)
            per_param = work.optimizer_state_bytes / max(1, work.param_count)
            # what each stage holds: the same for every dp and ZeRO stage
            held_key = (plan.tp, plan.pp, plan.interleave, plan.cp, plan.ep, plan.etp,
                        plan.stages)
            if held_key not in self._held:
                room(self._held)
                self._held[held_key] = stage_held(work, plan, layout)
            room(self._state_bytes)
            self._state_bytes[key] = stage_state(work, plan, layout, per_param,
                                                 self._held[held_key])
        return self._state_bytes[key]

    def _state_fits(self, plan: Plan) -> bool:
        """Weights, gradients and optimizer state of the fullest stage within capacity."""
        key = self._state_key(plan)
        if key not in self._state:
            state = self._stage_state(plan)
            worst = max(range(plan.pp), key=lambda s: state[s])
            room(self._state)
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
