"""The plan search's time bounds (`dojo.sim.search` states them and why each is a lower bound),
with what they share cached: the per-plan first bound on the pipeline's task times, ZeRO 3's
weight streaming included, and the per-mb op-time terms of a dp x tp x pp. `screen._Screen`
adds the memory screens and the caches they need.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from dojo.compiler.experts import MoeLayout, ep_gemm, expert_layout
from dojo.compiler.mapping import group_levels, leaves_per_device
from dojo.compiler.program import PRECISION_BYTES, tied_copy
from dojo.compiler.work import ModelWork
from dojo.plan.plan import Plan, plan_split
from dojo.sim.costs import DeviceModel
from dojo.sim.fp8 import fp8_device
from dojo.sim.overlap import grad_bytes
from dojo.sim.pipeline import SHORT_ORDER, group_chain_bound, ring_bound
from dojo.sim.searchspace import (
    all_to_all_pair,
    all_to_all_parts,
    chunk_parts,
    collective_s,
    divisors,
    tp_section_times,
)
from dojo.sim.searchspace import fast_replace as _with
from dojo.sim.session import context_seq, experts_of, fuses_attention, graph_at, work_for
from dojo.sim.simulate import device_for

SAFETY = 1 - 1e-9   # bounds add the same seconds in another order than the simulation
RING_UNITS = SHORT_ORDER   # 64: orders of at most this many forwards per device get
# `ring_bound` early: O(units) against the compile it may spare (a speed choice, not a bound);
# `pipeline` keeps their orders

# (forward inside the stream's max, backward inside it, forward after it, backward after it)
# seconds per virtual stage: `simulate.task_durations` takes max(ops, stream) + collectives
Parts = tuple[list[float], list[float], list[float], list[float]]
CACHE_ENTRIES = 1 << 16   # per cache of a search: ~10-20 MB each; cleared, not grown, beyond


@dataclass(frozen=True)
class Profile:
    """A split of the blocks over pp x interleave virtual stages, by kind of chunk: `kinds`
    (blocks, whether it is the first, whether the last), the first virtual stage of each kind,
    per device its kinds with their counts, and the kind of every virtual stage. The first
    bound's arithmetic is per kind, not per virtual stage. `peaks`: the devices whose end
    `makespan` takes, each with its counts: the last device of each distinct counts (an
    earlier one with the same counts runs the same work after a head and before a tail that
    are sums of fewer of the same nonnegative terms, so its end is never larger, rounding
    included: a float sum of nonnegative terms does not shrink as terms are added)."""

    kinds: tuple[tuple[int, bool, bool], ...]
    first_chunk: tuple[int, ...]
    stages: tuple[tuple[tuple[int, int], ...], ...]
    kind_of: tuple[int, ...]
    peaks: tuple[tuple[int, tuple[tuple[int, int], ...]], ...]

    @staticmethod
    def of(split: list[int] | None, pp: int, interleave: int) -> Profile:
        chunks = pp * interleave
        index: dict[tuple[int, bool, bool], int] = {}
        first: list[int] = []
        of_chunk = []
        for v in range(chunks):
            kind = (split[v] if split else 0, v == 0, v == chunks - 1)
            if kind not in index:
                index[kind] = len(index)
                first.append(v)
            of_chunk.append(index[kind])
        stages = tuple(tuple(sorted(Counter(of_chunk[c * pp + s] for c in range(interleave))
                                    .items())) for s in range(pp))
        last = {counts: s for s, counts in enumerate(stages)}
        peaks = tuple((s, counts) for s, counts in enumerate(stages) if last[counts] == s)
        return Profile(tuple(index), tuple(first), stages, tuple(of_chunk), peaks)

    def makespan(self, micro: int, fwd: list[float], bwd: list[float]) -> float:
        """`pipeline.makespan_bounds`' largest end + tail (no transfers), with `fwd` and `bwd`
        seconds per kind: device s ends after a head (the forwards of virtual stages 0 to
        s - 1, its predecessors' first chunks), micro x its work, and a tail (their
        backwards), each sum taken in that order."""
        both = [f + b for f, b in zip(fwd, bwd)]
        firsts = self.kind_of[:len(self.stages) - 1]
        head = list(accumulate(map(fwd.__getitem__, firsts), initial=0.0))
        tail = list(accumulate(map(bwd.__getitem__, firsts), initial=0.0))
        return max(head[s] + micro * sum(n * both[k] for k, n in counts) + tail[s]
                   for s, counts in self.peaks)


def room(cache: dict[Any, Any]) -> None:
    """Make room in one of the search's caches before an insertion: empty it when full. Its
    keys are one group's or one family's (a group's bounds are asked when it is refined and
    again when it is expanded), so a cleared entry costs one recomputation, and the peak
    memory stays put however large the space."""
    if len(cache) >= CACHE_ENTRIES:
        cache.clear()


def held_params(work: ModelWork, plan: Plan, layout: MoeLayout | None) -> list[int]:
    """Parameters (whole, before the tp split) each virtual stage's chunk holds as the compiled
    program does (the last one's copy of a tied embedding included): with ep a chunk's routed
    experts are whole x f // ep of them (`experts.apply_experts`; f = tp with etp = 1, else 1).
    """
    chunks = plan.pp * plan.interleave
    split = plan_split(plan, work.repeat) if work.block else None
    out = []
    for v in range(chunks):
        n = split[v] if split and work.block else 0
        params = (work.block.params * n if work.block else 0) \
            + (work.pre.params if v == 0 else 0) \
            + (work.post.params + tied_copy(work, plan) if v == chunks - 1 else 0)
        if layout is not None and (plan.ep > 1 or plan.imbalance != 1.0):
            whole = layout.block_params * n + (layout.outer_params if v == 0 else 0)
            params = params - whole + whole * expert_layout(plan)[1] // plan.ep
        out.append(params)
    return out


class TimeBounds:
    """The time bounds of a search over `args` = (model, overrides, spec, batch, seq)."""

    args: tuple[Any, ...]
    _dev: dict[tuple[str, str], DeviceModel]
    _sums: dict[tuple[Any, ...], tuple[float, ...]]
    _bounds: dict[tuple[Any, ...], float]
    _times: dict[tuple[Any, ...], Parts]
    _last_times: tuple[tuple[Any, ...], Parts] = ((), ([], [], [], []))
    _last_kinds: tuple[tuple[Any, ...], Parts] = ((), ([], [], [], []))
    _profiles: dict[tuple[Any, ...], Profile]
    _streams: dict[tuple[Any, ...], Any]   # per plan its list; per dp x tp a dict by params
    _mb_terms: dict[tuple[Any, ...], dict[int, float]]
    _a2a: dict[tuple[Any, ...], tuple[float, bool]]
    _terms: dict[tuple[Any, ...], tuple[Any, ...]]
    _works: dict[tuple[Any, ...], ModelWork]
    _layouts: dict[tuple[int, int], MoeLayout | None]

    def _work(self, plan: Plan, mb: int | None = None) -> ModelWork:
        """`session.work_for`, looked up by the plan fields it reads (the search asks
        hundreds of thousands of times; building `work_for`'s own key costs more)."""
        key = (mb or plan.mb, plan.tp, plan.sp, plan.precision, plan.fusion, plan.cp,
               plan.etp, plan.recompute)
        found = self._works.get(key)
        if found is None:
            model, overrides, spec, _, seq = self.args
            room(self._works)
            found = self._works[key] = work_for(model, overrides, mb or plan.mb, seq, plan,
                                                derive=True,
                                                fused_attention=fuses_attention(spec))
        return found

    def _layout(self, plan: Plan, mb: int | None = None) -> MoeLayout | None:
        """The routed experts at micro-batch `mb` (the plan's by default), or None."""
        model, overrides, _, _, seq = self.args
        key = (mb or plan.mb, plan.cp)
        if key not in self._layouts:
            local = context_seq(model, overrides, plan, seq)
            graph, config = graph_at(model, overrides, key[0], local, derive=True)
            self._layouts[key] = experts_of(graph, config, key[0], local)
        return self._layouts[key]

    def _expert_sizes(self, plan: Plan) -> list[int]:
        raise NotImplementedError

    def _first_bound(self, plan: Plan) -> float:
        """`makespan_bounds` on the tasks' op and collective times (seconds per micro-batch),
        each task at least max(ops, ZeRO 3's weight stream) + its collectives. It holds for
        every task order, so for every schedule and `vp_group`."""
        key = (plan.mb, plan.tp, plan.sp, plan.pp, plan.interleave, plan.recompute, plan.cp,
               plan.ep, plan.stages, plan.dp, plan.precision, plan.zero >= 3, plan.etp)
        found = self._bounds.get(key)
        if found is None:
            profile = self._profile(plan)
            f_in, b_in, f_out, b_out = self._kind_times(plan, profile)
            if plan.zero >= 3 and plan.dp_cp > 1:
                stream = self._stream(plan)
                stream = [stream[v] for v in profile.first_chunk]
                fwd = [max(a, s) + c for a, s, c in zip(f_in, stream, f_out)]
                bwd = [max(a, s) + c for a, s, c in zip(b_in, stream, b_out)]
            else:
                fwd = [a + c for a, c in zip(f_in, f_out)]
                bwd = [a + c for a, c in zip(b_in, b_out)]
            micro = self.args[3] // (plan.dp * plan.mb)
            room(self._bounds)
            found = self._bounds[key] = profile.makespan(micro, fwd, bwd) * SAFETY
        return found

    def _task_floors(self, plan: Plan) -> tuple[list[float], list[float]]:
        """Per virtual stage, seconds below each forward and each backward task: max(ops,
        ZeRO 3's weight stream) + the collectives every task waits for."""
        f_in, b_in, f_out, b_out = self._chunk_times(plan)
        if plan.zero >= 3 and plan.dp_cp > 1:
            stream = self._stream(plan)
            return ([max(a, s) + c for a, s, c in zip(f_in, stream, f_out)],
                    [max(a, s) + c for a, s, c in zip(b_in, stream, b_out)])
        return [a + c for a, c in zip(f_in, f_out)], [a + c for a, c in zip(b_in, b_out)]

    def _ordered(self, plan: Plan) -> bool:
        """Whether the plan waits under `_order_bound` before its bytes are walked: every
        `vp_group` plan, and every pipeline whose order is short (`RING_UNITS`), where the
        ring bound costs little and sees GPipe's and few micro-batches' stalls."""
        micro = self.args[3] // (plan.dp * plan.mb)
        return bool(plan.vp_group) or (plan.pp > 1 and micro * plan.interleave <= RING_UNITS)

    def _order_bound(self, plan: Plan) -> float:
        """A bound that sees the plan's own task order, at least `_first_bound`: for the
        interleaved order's micro-batch groups (`vp_group`; N < pp stalls the ring)
        `pipeline.group_chain_bound` on `_task_floors`, in O(pp x interleave); for a short
        order (`RING_UNITS`) `pipeline.ring_bound` on them, in O(micro-batches x interleave)."""
        key = ("order", plan.mb, plan.tp, plan.sp, plan.pp, plan.interleave, plan.recompute,
               plan.cp, plan.ep, plan.stages, plan.dp, plan.precision, plan.zero >= 3,
               plan.vp_group, plan.etp, plan.schedule)
        found = self._bounds.get(key)
        if found is None:
            fwd, bwd = self._task_floors(plan)
            micro = self.args[3] // (plan.dp * plan.mb)
            total = 0.0
            if plan.vp_group:
                total = group_chain_bound(plan.pp, micro, plan.vp_group, fwd, bwd)
            if micro * plan.interleave <= RING_UNITS:
                total = max(total, ring_bound(plan.pp, micro, plan.vp_group, fwd, bwd, 0.0, 0,
                                              plan.schedule))
            room(self._bounds)
            found = self._bounds[key] = max(self._first_bound(plan), total * SAFETY)
        return found

    def _profile(self, plan: Plan) -> Profile:
        """The `Profile` of the plan's split of the blocks, cached per split."""
        key = (plan.pp, plan.interleave, plan.stages)
        found = self._profiles.get(key)
        if found is None:
            work = self._work(plan, 2)
            split = plan_split(plan, work.repeat) if work.block else None
            room(self._profiles)
            found = self._profiles[key] = Profile.of(split, plan.pp, plan.interleave)
        return found

    def _kind_times(self, plan: Plan, profile: Profile) -> Parts:
        """`_chunk_times` per kind of chunk of `profile` (its blocks, whether first, whether
        last): the chunks of a kind run the same ops and collectives."""
        key = (plan.mb, plan.tp, plan.sp, plan.pp, plan.interleave, plan.recompute, plan.cp,
               plan.ep, plan.stages, plan.precision, plan.etp)
        if self._last_kinds[0] == key:   # ZeRO 3's bound after the others'
            return self._last_kinds[1]
        pre_f, pre_b, blk_f, blk_b, rec, post_f, post_b, t, pair, again, layers, outer = \
            self._kind_terms(plan)
        times: Parts = ([], [], [], [])
        for n, first, last in profile.kinds:
            a2a = pair * (n * layers + (outer if first else 0))
            times[0].append((pre_f if first else 0.0) + n * blk_f + (post_f if last else 0.0))
            times[1].append((pre_b if first else 0.0) + n * (blk_b + rec)
                            + (post_b if last else 0.0) + (pair * n * layers if again else 0.0))
            times[2].append((t[0] if first else 0.0) + n * t[2] + (t[5] if last else 0.0) + a2a)
            times[3].append((t[1] if first else 0.0) + n * t[3] + (t[6] if last else 0.0) + a2a)
        self._last_kinds = (key, times)
        return times

    def _kind_terms(self, plan: Plan) -> tuple[Any, ...]:
        """What `_kind_times` reads of the plan's work, the same for every split of the blocks
        (cached per mb, tp, sp, recompute, cp, ep, precision, etp and attn): the section sums with
        the recompute's seconds in the selective slot, the tp collectives' sums, and the
        all-to-all pair's seconds, whether the recompute replays it, and the MoE layers of a
        block and outside the blocks."""
        key = (plan.mb, plan.tp, plan.sp, plan.recompute, plan.cp, plan.ep, plan.precision,
               plan.etp, plan.attn)
        found = self._terms.get(key)
        if found is None:
            work = self._work(plan)
            tps = self._tp_sums(plan, work) if plan.tp > 1 and not plan.tp_overlap else None
            pre_f, pre_b, blk_f, blk_b, blk_sel, post_f, post_b = self._section_sums(plan)
            t = tps or (0.0,) * 7
            rec = {"full": blk_f + t[2], "selective": blk_sel}.get(plan.recompute, 0.0)
            layout = self._layout(plan)
            pair, again, layers, outer = 0.0, False, 0, 0
            if layout is not None and plan.ep > 1:
                cal = self._device(plan.precision, plan.attn).calibration
                pair, again = all_to_all_pair(self.args[2], cal, plan, work, layout, self._a2a)
                layers, outer = layout.block_layers, layout.outer_layers
            room(self._terms)
            found = self._terms[key] = (pre_f, pre_b, blk_f, blk_b, rec, post_f, post_b, t,
                                        pair, again, layers, outer)
        return found

    def _stream(self, plan: Plan) -> list[float]:
        """Per virtual stage, the seconds ZeRO 3 streams its weights per pass
        (`simulate._zero3_time`: the gather, and half the gradients' reduce-scatter, over the
        dp x cp group); zeros below ZeRO 3 or without dp x cp. Independent of mb and sp."""
        chunks = plan.pp * plan.interleave
        if plan.zero < 3 or plan.dp_cp == 1:
            return [0.0] * chunks
        key = (plan.tp, plan.pp, plan.interleave, plan.stages, plan.dp, plan.cp, plan.ep,
               plan.precision, plan.grad_reduce, plan.etp)
        if key not in self._streams:
            # chunks holding as many parameters stream alike, in every split of this dp x tp
            group = ("each", plan.tp, plan.dp, plan.cp, plan.precision, plan.grad_reduce)
            each = self._streams.get(group)
            if each is None or len(each) > CACHE_ENTRIES:
                each = self._streams[group] = {}
            held = held_params(self._work(plan, 2), plan, self._layout(plan, 2))
            for params in held:
                if params not in each:
                    each[params] = self._stream_of(plan, params)
            room(self._streams)
            self._streams[key] = [each[p] for p in held]
        return self._streams[key]

    def _stream_of(self, plan: Plan, params: int) -> float:
        """Seconds ZeRO 3 streams `params` whole parameters per pass: the gather, and half the
        gradients' reduce-scatter, over the plan's dp x cp group."""
        spec = self.args[2]
        cal = self._device(plan.precision, plan.attn).calibration
        levels = group_levels(spec, plan.dp_cp, plan.tp)
        size = PRECISION_BYTES[plan.precision]["weights"]
        weights = params / plan.tp * size
        gather = collective_s(spec, cal, "all_gather", weights, levels)
        scatter = collective_s(spec, cal, "reduce_scatter", weights / size * grad_bytes(plan),
                               levels)
        return gather + scatter / 2

    def _stream_floor(self, family: Plan) -> float:
        """Seconds per micro-batch below every plan of this dp x tp x pp x interleave x split
        with only ZeRO 3 fitting at its ep: each of a device's tasks takes at least its chunk's
        stream, so the device at least 2 x the streams of its chunks per micro-batch; the
        least over the ep whose ZeRO 2 state does not fit (0 where one does)."""
        if family.dp == 1:   # no ZeRO in the space
            return 0.0
        least = math.inf
        for ep in self._expert_sizes(family):
            if self._state_within(family, 2, ep):
                return 0.0
            stream = self._stream(_with(family, zero=3, ep=ep))
            least = min(least, 2 * max(sum(stream[c * family.pp + s]
                                           for c in range(family.interleave))
                                       for s in range(family.pp)))
        return least * SAFETY if least < math.inf else 0.0

    def _state_within(self, plan: Plan, zero: int, ep: int) -> bool:
        raise NotImplementedError

    def _chunk_times(self, plan: Plan) -> Parts:
        """Per virtual stage, op seconds (the recompute's, and the collectives it reruns, with
        the backward) and the collectives every task waits for: tp's (as `simulate.chunk_times`
        times them without tp_overlap) and, with ep, the all-to-alls; cached for pp = 1 only
        (a pipeline's lists hold up to 2 (blocks + 2) floats per key, over ~10^5 keys on the
        largest spaces; `_first_bound` keeps their bound)."""
        key = (plan.mb, plan.tp, plan.sp, plan.pp, plan.interleave, plan.recompute, plan.cp,
               plan.ep, plan.stages, plan.precision, plan.etp)
        if key in self._times:
            return self._times[key]
        if self._last_times[0] == key:   # ZeRO 3's bound after the others' (a pipeline's)
            return self._last_times[1]
        layout = self._layout(plan)
        profile = self._profile(plan)
        if layout is None or plan.ep == 1:
            # the chunks of a kind run the same ops and collectives: `_kind_times` (the same
            # sums as `chunk_parts`), per virtual stage
            kinds = self._kind_times(plan, profile)
        else:
            # and the same all-to-alls: `chunk_parts` and `all_to_all_parts` over one chunk
            # per kind, in order (the first kind holds chunk 0, the last kind the last chunk:
            # each is alone in its kind), the same sums per chunk
            work = self._work(plan)
            split, count = [n for n, _, _ in profile.kinds], len(profile.kinds)
            tps = self._tp_sums(plan, work) if plan.tp > 1 and not plan.tp_overlap else None
            each = chunk_parts(self._section_sums(plan), tps, split, count, plan.recompute)
            cal = self._device(plan.precision, plan.attn).calibration
            parts = all_to_all_parts(self.args[2], cal, plan, work, layout, split, count,
                                     self._a2a)
            kinds = (each[0], [b + r for b, r in zip(each[1], parts[2])],
                     [f + a for f, a in zip(each[2], parts[0])],
                     [b + a for b, a in zip(each[3], parts[1])])
        of = profile.kind_of
        times = (list(map(kinds[0].__getitem__, of)), list(map(kinds[1].__getitem__, of)),
                 list(map(kinds[2].__getitem__, of)), list(map(kinds[3].__getitem__, of)))
        if plan.pp == 1:   # the op bound's, asked per dp; a pipeline's: its bound is kept
            self._times[key] = times
        self._last_times = (key, times)
        return times

    def _op_bound(self, plan: Plan) -> float:
        """A bound on every plan of this dp x tp x pp: the first bound is at least micro x the
        model's op and collective seconds per micro-batch (all stages, recompute none) / pp,
        at the best mb, sp and ep."""
        key = (plan.dp, plan.tp, plan.pp, plan.cp, plan.precision, plan.fusion)
        if key not in self._mb_terms:   # per mb: micro x its seconds / pp
            # x / pp x SAFETY is nondecreasing in x: the least term is the least x's
            self._mb_terms[key] = {mb: x / plan.pp * SAFETY
                                   for mb, x in self._mb_seconds(plan).items()}
        return min(self._mb_terms[key].values())

    def _mb_seconds(self, plan: Plan) -> dict[int, float]:
        """Per mb, the least over sp and ep of micro x the model's op and collective seconds
        per micro-batch: the same for every pp of this dp and tp (`_op_bound` divides it)."""
        key = ("mb", plan.dp, plan.tp, plan.cp, plan.precision, plan.fusion)
        if key not in self._mb_terms:
            batch, least = self.args[3], dict[int, float]()
            eps = self._expert_sizes(plan)
            for mb in divisors(batch // plan.dp):
                for sp in (False, True) if plan.tp > 1 else (False,):
                    for ep in eps:
                        f_in, b_in, f_out, b_out = self._chunk_times(_with(
                            plan, mb=mb, sp=sp, ep=ep, interleave=1, pp=1, stages=()))
                        x = batch // (plan.dp * mb) * (f_in[0] + b_in[0] + f_out[0] + b_out[0])
                        least[mb] = min(least.get(mb, math.inf), x)
            self._mb_terms[key] = least
        return self._mb_terms[key]

    def _tp_sums(self, plan: Plan, work: ModelWork) -> tuple[float, ...]:
        """Seconds of the sections' tp collectives on the tp group's levels, in the order of
        `_section_sums` (the recompute slot 0: `_chunk_times` adds a full recompute's)."""
        key = ("tp", plan.mb, plan.tp, plan.sp, plan.cp, plan.precision, plan.etp)
        if key not in self._sums:
            spec = self.args[2]
            self._sums[key] = tp_section_times(work, spec, self._device(plan.precision, plan.attn)
                                               .calibration, group_levels(spec, plan.tp, 1))
        return self._sums[key]

    def _section_sums(self, plan: Plan) -> tuple[float, ...]:
        key = (plan.mb, plan.tp, plan.sp, plan.cp, plan.precision, plan.ep, plan.etp, plan.attn)
        if key not in self._sums:
            work = self._work(plan)
            dev = self._device(plan.precision, plan.attn)
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

    def _device(self, precision: str, attn: str) -> DeviceModel:
        if (precision, attn) not in self._dev:
            spec = self.args[2]
            dev = device_for(spec, precision, leaves_per_device(spec), attn)
            if precision == "fp8":  # every matrix op at the FP8 peak: still a lower bound
                dev = fp8_device(dev, spec, leaves_per_device(spec))
            self._dev[precision, attn] = dev
        return self._dev[precision, attn]
