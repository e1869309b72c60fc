"""The plan search's space and results, piece by piece: which dp x tp x pp a system can hold
(`device_splits`), which splits of the blocks are searched (`stage_splits`), how many plans a
group holds (`variant_count`), and the FLOP a bound is drawn from (`model_flops`). See
`dojo.sim.search` for the space and the argument that it is exact.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dojo.compiler.experts import (
    MoeLayout,
    a2a_bytes,
    dispatch_comms,
    expert_layout,
    replays_experts,
)
from dojo.compiler.mapping import GroupLevel, group_levels, zplane_levels
from dojo.compiler.placement import devices_placed, tp_placed
from dojo.compiler.program import PRECISION_BYTES
from dojo.compiler.work import ModelWork
from dojo.errors import ConfigError, DojoError
from dojo.hardware.spec import SystemSpec
from dojo.plan.plan import ModelShape, Plan, chunk_blocks, group_runs, validate_plan
from dojo.plan.plan import fast_replace as fast_replace  # where the search's callers look
from dojo.plan.stages import planner_splits
from dojo.sim.collectives import collective_time
from dojo.sim.session import Simulated, context_seq

RECOMPUTES = ("none", "selective", "full")
MIN_CP_TOKENS = 4096   # tokens per rank below which the search tries no larger cp


@dataclass(frozen=True)
class Bundle:
    """Plans of one group that share a first bound (`_Screen.plans`): `probe` (its recompute,
    sp and ep) at each of `zeros` under each of `schedules`, the interleaved one at each
    `vp_group` of `sizes`."""

    probe: Plan
    zeros: tuple[int, ...]
    schedules: tuple[str, ...]
    sizes: tuple[int, ...]


def bundle_plans(bundle: Bundle) -> Iterator[Plan]:
    """The plans of a bundle: its probe at each kept ZeRO stage under each schedule, the
    interleaved one at each `vp_group`."""
    for schedule in bundle.schedules:
        for zero in bundle.zeros:
            for n in bundle.sizes if schedule == "interleaved" else (0,):
                yield fast_replace(bundle.probe, zero=zero, schedule=schedule, vp_group=n)


def _family(plan: Plan) -> str:
    cp = f",cp={plan.cp}" if plan.cp > 1 else ""
    ep = f",ep={plan.ep}" if plan.ep > 1 else ""
    return f"tp={plan.tp}{cp},pp={plan.pp}{ep},recompute={plan.recompute},zero={plan.zero}"


def _simplicity(p: Plan) -> tuple[int, ...]:
    """Fewer moving parts first: no recompute, no ZeRO, less tp and pp, 1F1B, no sp, the
    default split, fewer devices, the default micro-batch group (then larger groups)."""
    return (RECOMPUTES.index(p.recompute), p.zero, p.tp, p.cp, p.ep, p.pp, p.interleave,
            int(p.schedule == "gpipe"), int(p.sp), p.mb, int(bool(p.stages)), p.devices,
            int(p.vp_group > 0), -p.vp_group)


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
        """The search's result without `search_s` (wall seconds): same inputs, same bytes."""
        return {"best": self.best.to_json(),
                "candidates": [c.to_json() for c in self.candidates],
                "rejected": [{"family": f, "reason": r} for f, r in self.rejected]}

def divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n ** 0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def device_splits(shape: ModelShape, devices: int, batch: int, spec: SystemSpec | None = None,
                  cp: int = 1) -> Iterator[tuple[int, int, int]]:
    """(tp, pp, dp) with dp x tp x pp x `cp` <= `devices` (the rest idle), tp dividing the
    model's heads and widths, pp x 1 virtual stages at most blocks + 2, dp dividing the batch,
    placed on `spec` (`dojo.compiler.placement`; any count when `spec` is None)."""
    sizes = [n for n in (shape.heads, shape.hidden, shape.ffn, shape.kv_heads) if n]
    room = devices // cp
    for tp in range(1, room + 1):
        if any(n % tp for n in sizes) or (spec is not None and not tp_placed(spec, tp)):
            continue
        for pp in range(1, min(room // tp, shape.layers + 2) + 1):
            for dp in divisors(batch):
                if dp * tp * pp > room:
                    break
                if spec is None or devices_placed(spec, dp * tp * pp * cp):
                    yield tp, pp, dp


def context_sizes(model: str, overrides: Mapping[str, Any], seq: int | None,
                  devices: int) -> tuple[int, ...]:
    """The cp sizes the search tries (`dojo.sim.search`): 1, and for a sequence model the
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


def expert_sizes(shape: ModelShape, dp: int) -> list[int]:
    """The ep the search tries: 1, and for an MoE model every divisor of both dp and its
    experts (ep is carved out of dp and splits whole experts)."""
    return [e for e in divisors(dp) if shape.experts and shape.experts % e == 0] or [1]


def stage_splits(layers: int, chunks: int) -> list[tuple[int, ...]]:
    """The splits searched (`dojo.plan.stages.planner_splits`), the default one written as
    () (no `stages=`)."""
    default = chunk_blocks(layers, chunks)
    return [() if list(s) == default else s for s in planner_splits(layers, chunks)]


def group_sizes(pp: int, interleave: int, micro: int) -> list[int]:
    """The `vp_group` values the search writes for an interleaved plan of `micro` micro-batches
    per pipeline: where pp divides micro, N = pp (0, the default) and every N < pp whose groups
    run (`plan.group_runs`), larger first; none where pp does not divide micro (not searched:
    `dojo.sim.search`); [0] without interleaving."""
    if interleave == 1:
        return [0]
    if micro % pp:
        return []
    return [0] + [n for n in range(min(pp - 1, micro), 0, -1) if group_runs(pp, micro, n)]


def variant_count(base: Plan, shape: ModelShape, devices: int, batch: int) -> int:
    """How many plans `variants(base, ...)` yields, without building them."""
    micro = batch // (base.dp * base.mb)
    schedules = sum(len(group_sizes(base.pp, base.interleave, micro))
                    if schedule == "interleaved" else 1
                    for schedule in schedules_of(base, shape, devices, batch))
    return (schedules * len(RECOMPUTES) * (4 if base.dp > 1 else 1) * (2 if base.tp > 1 else 1)
            * len(expert_sizes(shape, base.dp)))


def model_flops(work: ModelWork) -> float:
    """FLOP of one device's forward and backward over the whole model (all chunks)."""
    def total(ops: Any) -> float:
        return float(sum(o.flops for o in ops))

    blocks = (total(work.block.forward) + total(work.block.backward)) * work.repeat \
        if work.block else 0.0
    return (total(work.pre.forward) + total(work.pre.backward) + blocks
            + total(work.post.forward) + total(work.post.backward))


def plan_space(shape: ModelShape, devices: int, batch: int, precision: str = "bf16",
               fusion: str = "full", spec: SystemSpec | None = None, cp: int = 1
               ) -> Iterator[Plan]:
    """Every plan worth considering (module docstring) with context-parallel size `cp`: valid,
    placed on `spec` as its compiler would (`dojo.compiler.placement`), and not dominated."""
    for tp, pp, dp in device_splits(shape, devices, batch, spec, cp):
        inters = [v for v in range(1, shape.layers + 3) if pp > 1 or v == 1]
        for inter in inters:
            for stages in stage_splits(shape.layers, pp * inter):
                for mb in divisors(batch // dp):
                    yield from variants(Plan(dp=dp, tp=tp, pp=pp, cp=cp, mb=mb,
                                              interleave=inter, precision=precision,
                                              fusion=fusion, stages=stages),
                                         shape, devices, batch)


def context_space(shape: ModelShape, devices: int, batch: int, cps: tuple[int, ...] = (1,),
                  precision: str = "bf16", fusion: str = "full",
                  spec: SystemSpec | None = None) -> Iterator[Plan]:
    """`plan_space` for each context-parallel size in `cps`."""
    for cp in cps:
        yield from plan_space(shape, devices, batch, precision, fusion, spec, cp)


def schedules_of(base: Plan, shape: ModelShape, devices: int, batch: int) -> list[str]:
    """The schedules of `base` (its interleave's 1F1B, and GPipe with pp > 1) that
    `validate_plan` accepts for a plan of `base`'s dp, tp, pp, cp, mb, interleave, precision,
    fusion and stages (the other fields cannot make a valid plan invalid)."""
    fields = {k: getattr(base, k) for k in ("dp", "tp", "pp", "cp", "mb", "interleave",
                                            "precision", "fusion", "stages")}
    groups = group_sizes(base.pp, base.interleave, batch // (base.dp * base.mb))
    out = []
    for schedule in ["1f1b" if base.interleave == 1 else "interleaved"] + \
            (["gpipe"] if base.pp > 1 else []):
        group = groups[0] if schedule == "interleaved" and groups else 0   # N = pp, or less
        try:
            validate_plan(Plan(**fields, schedule=schedule, vp_group=group), shape, devices,
                          batch)
        except ConfigError:
            continue
        out.append(schedule)
    return out


def variants(base: Plan, shape: ModelShape, devices: int, batch: int) -> Iterator[Plan]:
    """The schedules (the interleaved one with each of its `group_sizes`), recompute, ZeRO and
    sp settings of `base` that `validate_plan` accepts (it is run once per schedule: the other
    settings cannot make a valid plan invalid)."""
    fields = {k: getattr(base, k) for k in ("dp", "tp", "pp", "cp", "mb", "interleave",
                                            "precision", "fusion", "stages")}
    micro = batch // (base.dp * base.mb)
    for schedule in schedules_of(base, shape, devices, batch):
        groups = group_sizes(base.pp, base.interleave, micro) if schedule == "interleaved" \
            else [0]
        for rec in RECOMPUTES:
            for zero in (0, 1, 2, 3) if base.dp > 1 else (0,):
                for sp in (False, True) if base.tp > 1 else (False,):
                    for ep in expert_sizes(shape, base.dp):
                        for group in groups:
                            yield Plan(**fields, schedule=schedule, recompute=rec, zero=zero,
                                       sp=sp, ep=ep, vp_group=group)


def chunk_parts(sums: tuple[float, ...], tps: tuple[float, ...] | None,
                split: list[int] | None, chunks: int, recompute: str
                ) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per virtual stage, from the section sums of op seconds (embedding side forward and
    backward, block forward, backward and selective recompute, head side forward and backward)
    and of tp collective seconds in that order (`tps`, None without): (forward ops, backward
    and recompute ops with the collectives a full recompute reruns (the block's forward ones),
    forward collectives, backward collectives)."""
    pre_f, pre_b, blk_f, blk_b, blk_sel, post_f, post_b = sums
    t = tps or (0.0,) * 7
    rec = {"full": blk_f + t[2], "selective": blk_sel}.get(recompute, 0.0)
    f_in, b_in, f_out, b_out = [], [], [], []
    for v in range(chunks):
        n = split[v] if split else 0
        first, last = v == 0, v == chunks - 1
        f_in.append((pre_f if first else 0.0) + n * blk_f + (post_f if last else 0.0))
        b_in.append((pre_b if first else 0.0) + n * (blk_b + rec) + (post_b if last else 0.0))
        f_out.append((t[0] if first else 0.0) + n * t[2] + (t[5] if last else 0.0))
        b_out.append((t[1] if first else 0.0) + n * t[3] + (t[6] if last else 0.0))
    return f_in, b_in, f_out, b_out


def collective_s(spec: SystemSpec, cal: Any, kind: str, nbytes: float,
                levels: tuple[GroupLevel, ...]) -> float:
    """`simulate.collective` from the system alone: the faster of the levels and the Z-plane."""
    t = collective_time(kind, nbytes, levels, cal.link_efficiency, cal.collective_latency_s)[0]
    alt = zplane_levels(spec, levels)
    if alt:
        t = min(t, collective_time(kind, nbytes, alt, cal.link_efficiency,
                                   cal.collective_latency_s)[0])
    return t


def tp_section_times(work: ModelWork, spec: SystemSpec, cal: Any,
                     levels: tuple[GroupLevel, ...]) -> tuple[float, ...]:
    """Seconds of each section's tp collectives on `levels`, in the order of the search's
    section sums: embedding side forward, backward; block forward, backward, selective
    recompute (none); head side forward, backward."""
    def comm(comms: tuple[tuple[str, float], ...]) -> float:
        return sum(collective_s(spec, cal, kind, nbytes, levels) for kind, nbytes in comms)
    block = work.block
    return (comm(work.pre.tp_forward), comm(work.pre.tp_backward),
            comm(block.tp_forward) if block else 0.0, comm(block.tp_backward) if block else 0.0,
            0.0, comm(work.post.tp_forward), comm(work.post.tp_backward))


def no_fit_error(head: str, device: str, capacity: float, least: tuple[float, Plan] | None,
                 closest: tuple[float, int, Plan] | None) -> DojoError:
    """Why no plan fits, in one line: the least state any dp x tp x pp needs (`least`), or,
    when states fit but no plan does, the least bytes of the plans built (`closest`)."""
    gb = 1e9
    if least is not None:
        need, plan = least
        return DojoError(f"{head}: the least state of any plan, {plan.text()}, needs "
                         f"{need / gb:.2f} GB per {device} in weights, gradients and optimizer "
                         f"state (spread evenly, before activations) > capacity "
                         f"{capacity / gb:.2f} GB")
    built = ""
    if closest is not None:
        need, stage, plan = closest
        built = (f"; the least of the plans built: {need / gb:.2f} GB on stage {stage} of "
                 f"{plan.text()}")
    return DojoError(f"{head}: every plan's fullest {device} needs more than its capacity of "
                     f"{capacity / gb:.2f} GB in weights, gradients, optimizer state and "
                     f"activations in flight{built}")


def all_to_all_parts(spec: SystemSpec, cal: Any, plan: Plan, work: ModelWork,
                     layout: MoeLayout | None, split: list[int] | None, chunks: int,
                     memo: dict[tuple[Any, ...], tuple[float, bool]] | None = None
                     ) -> tuple[list[float], list[float], list[float]]:
    """Per virtual stage (`split`: its blocks), the seconds of each MoE layer's dispatch and
    combine all-to-alls with ep, as `experts.apply_experts` adds them: (forward, backward,
    again in the recompute where it replays the expert GEMMs); zeros without ep. Exposed in
    every task, so a bound stays a bound. `memo` keeps the pair's seconds and whether the
    recompute replays it, per work and plan fields they depend on (the caller's search: one
    work per (mb, tp, sp, cp))."""
    if layout is None or plan.ep == 1:
        return [0.0] * chunks, [0.0] * chunks, [0.0] * chunks
    pair, again = all_to_all_pair(spec, cal, plan, work, layout, memo)
    moe = [(split[v] if split else 0) * layout.block_layers for v in range(chunks)]
    each = [pair * (m + (layout.outer_layers if v == 0 else 0)) for v, m in enumerate(moe)]
    return each, list(each), [pair * m if again else 0.0 for m in moe]


def all_to_all_pair(spec: SystemSpec, cal: Any, plan: Plan, work: ModelWork, layout: MoeLayout,
                    memo: dict[tuple[Any, ...], tuple[float, bool]] | None = None
                    ) -> tuple[float, bool]:
    """(seconds of one MoE layer's dispatch and combine all-to-alls with the plan's ep > 1,
    whether the recompute replays them), kept in `memo` (`all_to_all_parts`)."""
    key = (plan.ep, plan.tp, plan.sp, plan.cp, plan.mb, plan.precision, plan.recompute,
           plan.etp, plan.dispatcher)
    if memo is None or key not in memo:
        levels = group_levels(spec, plan.ep, expert_layout(plan)[0])
        nbytes = a2a_bytes(layout, plan.tp, PRECISION_BYTES[plan.precision]["activation_scale"])
        seconds = 2 * min(sum(collective_time(c.kind, c.nbytes, c.levels, cal.link_efficiency,
                                              cal.collective_latency_s)[0]
                              for c in dispatch_comms(lv, layout, plan, nbytes))
                          for lv in (levels, zplane_levels(spec, levels) or levels))
        found = (seconds, replays_experts(work, layout, plan))
        if memo is None:
            return found
        memo[key] = found
    return memo[key]
