"""Expert parallelism (`ep`): the routed experts of MoE layers spread over ranks, tokens moved
to them and back by all-to-all.

Model (as Megatron-LM's MoE with its all-to-all token dispatcher): ep is carved out of the
data-parallel ranks (dp % ep == 0; ranks are tp innermost, then dp, so an ep group is ep
consecutive dp ranks, stride tp). Each rank holds experts / ep of every MoE layer's routed
experts and all of the rest (attention, router, shared experts, dense layers: replicated as in
plain data parallelism). Per MoE layer and micro-batch:

- the router runs on the rank's own tokens; dispatch is one all-to-all over the ep group that
  sends each of the rank's tokens x top_k assignments (hidden values each) to the rank holding
  its expert, combine one all-to-all back: per member a buffer of tokens x top_k x hidden x
  activation bytes, of which (ep - 1) / ep leaves the rank. Backward runs both again (the
  gradients of combine and dispatch), and a recompute that replays the expert GEMMs (full, or
  an op-level policy that does not keep them) replays the forward pair. With tp > 1
  each tp rank dispatches its 1/tp of the tokens (Megatron requires sequence parallelism there);
- a rank's experts then see ep x the local rows of 1/ep of the experts: the same FLOPs as the
  captured layer, which computed every expert on the local tokens at the same capacity, but
  each expert GEMM is (experts / ep) x (ep x C rows) and reads 1/ep of the expert weights
  (`ep_gemm`): bigger, less memory-bound GEMMs are what ep buys besides memory;
- load imbalance (`imbalance` >= 1): the busiest rank receives `imbalance` x the mean rows, so
  its expert GEMMs take (imbalance - 1) x more rows (added as scaled copies) and its
  all-to-all buffers are `imbalance` x larger. Every rank waits for the busiest;
- expert weights, their gradients and optimizer state are 1/ep per rank; their gradients are
  reduced over the ranks holding the same experts: the data-parallel group divided by ep (size
  dp / ep, stride tp x ep), with ZeRO sharding over that group.

The captured graph names its routed experts (dojo.models.moe): parameters `*.experts.*` with
the expert index first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from dojo.compiler.mapping import GroupLevel, group_levels
from dojo.compiler.work import ModelWork, OpCost, SectionWork, main_block
from dojo.errors import DojoError
from dojo.graph import Graph
from dojo.plan.plan import expert_tp

if TYPE_CHECKING:
    from dojo.compiler.program import Comm, Program

EXPERT_TAG = ".experts."


@dataclass(frozen=True)
class MoeLayout:
    """What the capture says about a model's routed experts, plan-independent, per micro-batch.
    Parameters are whole-model element counts."""

    experts: int
    top_k: int
    hidden: int
    tokens: int                   # tokens per micro-batch (micro-batch x sequence)
    block_layers: int             # MoE layers in one instance of the repeated block
    outer_layers: int             # MoE layers outside it (counted on the first stage)
    block_params: int             # routed-expert parameters of one block instance
    outer_params: int             # routed-expert parameters outside the block
    width: int                    # each expert's FFN width
    rows: int                     # capacity C: rows per expert per micro-batch, as captured
    groups: int = 1               # router groups (DeepSeek-V3: 8), group_top_k of them chosen
    group_top_k: int = 1


@dataclass(frozen=True)
class ExpertParallel:
    """The plan's expert parallelism laid over the system (attached to `Program.experts`)."""

    ep: int
    imbalance: float
    a2a_levels: tuple[GroupLevel, ...]     # the ep group
    grad_levels: tuple[GroupLevel, ...]    # ranks holding the same experts: dp / ep of them
    chunk_expert_params: tuple[float, ...]  # per virtual stage, held per rank (1/ep), whole tp
    a2a_bytes: float                       # one all-to-all buffer per member (bytes)
    layout: MoeLayout


def moe_layout(graph: Graph, config: Any, tokens: int) -> MoeLayout | None:
    """The routed experts of `graph` (None without any); `config.top_k` experts per token,
    `tokens` per micro-batch."""
    block = main_block(graph)
    made = {t for op in graph.ops for t in op.outputs}   # updated copies are not weights
    experts = [t for t in graph.tensors if t.role == "parameter" and t.view_of is None
               and t.id not in made and EXPERT_TAG in f".{t.name}" and len(t.shape) == 3]
    if not experts:
        return None
    top_k = int(getattr(config, "top_k", 0) or 0)
    if top_k < 1:
        raise DojoError("the model has routed experts (parameters '*.experts.*') but no "
                        "config field 'top_k' saying how many each token is sent to")
    count, hidden, width = experts[0].shape
    rows = max(1, math.ceil(float(getattr(config, "capacity", 1.0)) * tokens * top_k / count))
    inside = [t for t in experts if block is not None and t.block == block]
    outside = [t for t in experts if t not in inside]

    def layers(ts: list[Any]) -> int:
        return len({t.name.rsplit(".", 1)[0] for t in ts})

    return MoeLayout(experts=count, top_k=top_k, hidden=hidden, tokens=tokens,
                     block_layers=layers(inside), outer_layers=layers(outside),
                     block_params=sum(math.prod(t.shape) for t in inside),
                     outer_params=sum(math.prod(t.shape) for t in outside),
                     width=width, rows=rows, groups=int(getattr(config, "groups", 1) or 1),
                     group_top_k=int(getattr(config, "group_top_k", 1) or 1))


def a2a_bytes(layout: MoeLayout, tp: int, scale: float, imbalance: float = 1.0) -> float:
    """One dispatch (or combine) buffer per ep member, bytes: tokens / tp x top_k x hidden x
    activation bytes (4 x `scale`: 2 for BF16), x `imbalance` on the busiest rank."""
    return layout.tokens / tp * layout.top_k * layout.hidden * 4.0 * scale * imbalance


def remote_units(layout: MoeLayout, units: int) -> float:
    """Expected number of other units (nodes: the ep group's outermost level, `units` of them,
    each holding experts / units) that one token's top_k experts live on, under uniform routing
    (Megatron's force-balanced benchmarks). With group-limited routing whose groups tile the
    units (units % groups == 0) a token picks group_top_k groups, g = group_top_k x units /
    groups units, and top_k of their g x experts / units experts:
    g (1 - C((g - 1) e, k) / C(g e, k)) (units - 1) / units, e = experts / units; the own unit
    is one of the g with probability g / units. Otherwise g = units (no limit)."""
    per = layout.experts // units
    g = units
    if layout.groups > 1 and units % layout.groups == 0:
        g = min(units, layout.group_top_k * units // layout.groups)
    missed = math.comb((g - 1) * per, layout.top_k) / math.comb(g * per, layout.top_k)
    return g * (1.0 - missed) * (units - 1) / units


def dispatch_comms(levels: tuple[GroupLevel, ...], layout: MoeLayout, plan: Any,
                   nbytes: float) -> tuple[Comm, ...]:
    """One dispatch (or combine) over the ep group's `levels`, `nbytes` per member (all top_k
    copies of its tokens). `dispatcher=alltoall`: one all-to-all of them. `flex` (DeepEP,
    HybridEP) over a group spanning two or more levels: each token crosses the outermost level
    once per other unit holding one of its experts (`remote_units`), and inside the receiving
    unit all its copies are fanned out; the kernels pipeline the two, so the levels run at once
    as in the pairwise all-to-all. Expressed as that all-to-all with each level's bandwidth
    divided by what flex moves there over what the all-to-all would: outermost, (nbytes /
    top_k x remote) over nbytes (u - 1) / u; inside, the whole buffer spread over one unit's
    c = n / u members instead of over n: a factor u."""
    from dojo.compiler.program import Comm

    if plan.dispatcher != "flex" or len(levels) < 2:
        return (Comm("all_to_all", nbytes, levels, "ep"),)
    units = levels[-1].members
    sent = nbytes / layout.top_k * remote_units(layout, units)     # bytes out of the unit
    plain = nbytes * (units - 1) / units
    scaled = tuple(replace(lv, bytes_per_s=lv.bytes_per_s / units) for lv in levels[:-1]) + \
        (replace(levels[-1], bytes_per_s=levels[-1].bytes_per_s * plain / sent),)
    return (Comm("all_to_all", nbytes, scaled, "ep"),)


def sent_bytes(nbytes: float, ep: int) -> float:
    """Bytes one member sends in an all-to-all of `nbytes` per member: all but its own 1/ep."""
    return nbytes * (ep - 1) / ep


def ep_work(work: ModelWork, layout: MoeLayout | None, plan: Any, scale: float) -> ModelWork:
    """`work` with its expert GEMMs as one ep rank runs them (`ep_gemm`) and the busiest
    rank's extra rows (`imbalance`), section by section, before the chunks repeat them."""
    if layout is None or (plan.ep == 1 and plan.imbalance == 1.0):
        return work

    def ops(seq: tuple[OpCost, ...]) -> tuple[OpCost, ...]:
        mine = tuple(ep_gemm(o, layout, plan.ep, plan.tp, scale) for o in seq)
        gemms = [o for o, was in zip(mine, seq) if _is_expert_gemm(was, layout, plan.tp)]
        return mine + _busiest(gemms, layout, plan, scale)

    def section(sec: SectionWork) -> SectionWork:
        return replace(sec, forward=ops(sec.forward), backward=ops(sec.backward),
                       recompute_selective=ops(sec.recompute_selective))

    return replace(work, pre=section(work.pre), post=section(work.post),
                   block=section(work.block) if work.block is not None else None)


def replays_experts(work: ModelWork, layout: MoeLayout, plan: Any) -> bool:
    """Whether the plan's recompute reruns the block's expert GEMMs (full recompute, or a
    selective or op-level one whose rerun kernels include them), so that it dispatches their
    tokens and combines their outputs again. `work` as captured (before `ep_work`)."""
    if work.block is None or plan.recompute == "none":
        return False
    rerun = work.block.forward if plan.recompute == "full" else work.block.recompute_selective
    return any(_is_expert_gemm(o, layout, plan.tp) for o in rerun)


def apply_experts(program: Program, layout: MoeLayout | None, replay: bool) -> Program:
    """`program` (compiled from `ep_work`) with the plan's ep: expert weights 1/ep per rank,
    a dispatch and a combine all-to-all per MoE layer forward and backward, and again in the
    recompute when it `replay`s the expert GEMMs. Unchanged without ep and imbalance."""
    from dojo.compiler.program import PRECISION_BYTES

    plan = program.plan
    ep, imbalance = plan.ep, plan.imbalance
    if layout is None:
        if ep > 1:
            raise DojoError(f"ep={ep} needs a model with routed experts (parameters "
                            "'*.experts.*'); this one has none")
        return program
    if ep == 1 and imbalance == 1.0:   # no comms to add; the layout still names the GEMMs
        return replace(program, experts=ExpertParallel(
            ep=1, imbalance=1.0, a2a_levels=(), grad_levels=program.grad_levels,
            chunk_expert_params=(), a2a_bytes=0.0, layout=layout))
    scale = PRECISION_BYTES[plan.precision]["activation_scale"]
    # ep consecutive ranks of the cp x dp ones (stride tp; Megatron-Core's expert mapping),
    # or of the tp x cp x dp ones with etp=1 (tp folded into the expert ranks)
    stride, whole_tp = expert_layout(plan)
    a2a_levels = group_levels(program.system, ep, stride)
    grad_levels = group_levels(program.system, expert_dp(plan), stride * ep)
    nbytes = a2a_bytes(layout, plan.tp, scale, imbalance)
    a2a = dispatch_comms(a2a_levels, layout, plan, nbytes)   # one Comm, as a tuple
    chunks, held = [], []
    for c in program.chunks:
        outer = c.index == 0
        layers = layout.block_layers * c.blocks + (layout.outer_layers if outer else 0)
        whole = layout.block_params * c.blocks + (layout.outer_params if outer else 0)
        held.append(whole / ep * whole_tp)   # counted, as all params, before the / tp
        comms = (a2a + a2a) * layers if ep > 1 else ()
        again = (a2a + a2a) * layout.block_layers * c.blocks if ep > 1 and replay else ()
        chunks.append(replace(c, tp_forward=c.tp_forward + comms,
                              tp_backward=c.tp_backward + comms,
                              tp_recompute=c.tp_recompute + again,
                              params=c.params - whole + whole * whole_tp // ep))
    moe = ExpertParallel(ep=ep, imbalance=imbalance, a2a_levels=a2a_levels,
                         grad_levels=grad_levels, chunk_expert_params=tuple(held),
                         a2a_bytes=nbytes, layout=layout)
    return replace(program, chunks=tuple(chunks), experts=moe)


def expert_batches(layout: MoeLayout, ep: int, tp: int) -> frozenset[int]:
    """Batch sizes of the routed experts' grouped GEMMs on one device after `ep_gemm`: the
    captured experts (or experts / tp), / ep."""
    return frozenset(max(1, b // ep) for b in (layout.experts, max(1, layout.experts // tp)))


def _is_expert_gemm(o: OpCost, layout: MoeLayout, tp: int) -> bool:
    """A batched matmul over the experts (the captured shape's batch is experts, / tp split)."""
    return o.kind == "matrix" and "bmm" in o.target and o.shape[0] in (
        layout.experts, max(1, layout.experts // tp))


def ep_gemm(o: OpCost, layout: MoeLayout, ep: int, tp: int, scale: float) -> OpCost:
    """An expert GEMM as one rank of the ep group runs it: experts / ep batches of ep x C rows
    (a weight gradient keeps its shape and sums over ep x C), the same FLOP, and 1/ep of the
    weight operand's bytes (a weight gradient's output likewise); other ops unchanged."""
    if ep == 1 or not _is_expert_gemm(o, layout, tp):
        return o
    b, m, n = o.shape
    weight = b * layout.hidden * layout.width * 4.0 * scale   # one weight operand, this device
    rows = m == layout.rows
    shape = (max(1, b // ep), m * ep if rows else m, n)
    out = o.out_bytes if rows else o.out_bytes / ep
    return replace(o, bytes=o.bytes - weight * (1 - 1 / ep), shape=shape, out_bytes=out)


def _busiest(gemms: list[OpCost], layout: MoeLayout, plan: Any, scale: float
             ) -> tuple[OpCost, ...]:
    """The busiest rank's extra expert work, extra = imbalance - 1: extra x the rows of each
    expert GEMM, as copies with extra x its FLOP and its activation bytes (the weight operand
    is read once, already counted)."""
    extra = plan.imbalance - 1.0
    if extra <= 0:
        return ()
    out = []
    for o in gemms:
        b, m, n = o.shape
        weight = b * layout.hidden * layout.width * 4.0 * scale
        rows = m in (layout.rows, layout.rows * plan.ep)
        shape = (b, max(1, round(m * extra)), n) if rows else o.shape
        out.append(replace(o, flops=o.flops * extra, bytes=max(0.0, o.bytes - weight) * extra,
                           shape=shape, out_bytes=o.out_bytes * extra if rows else 0.0))
    return tuple(out)


def param_groups(program: Program, stage: int
                 ) -> list[tuple[float, tuple[GroupLevel, ...], int]]:
    """(parameters held per device after the tp split, the levels their gradients reduce
    over, the size of that group) of `stage`: one group without ep; with ep the dense
    parameters over dp x cp and the experts' 1/ep over dp x cp / ep."""
    plan = program.plan
    total = program.device_params(stage)
    moe = program.experts
    if moe is None or moe.ep == 1:
        return [(total, program.grad_levels, plan.dp_cp)]
    held = sum(moe.chunk_expert_params[c.index] for c in program.device_chunks(stage)) / plan.tp
    return [(total - held, program.grad_levels, plan.dp_cp),
            (held, moe.grad_levels, expert_dp(plan))]


def bucket_groups(program: Program, params: float) -> list[tuple[float, tuple[GroupLevel, ...]]]:
    """A gradient bucket of `params` whole parameters (a block's, or the embedding section's)
    split into (parameters on this device, levels they reduce over): with ep its routed
    experts' 1/ep go over the experts' group, the rest over dp x cp."""
    local = params / program.plan.tp
    moe, work = program.experts, program.work
    if moe is None or moe.ep == 1:
        return [(local, program.grad_levels)]
    if work.block is not None and params == work.block.params:
        whole = moe.layout.block_params
    else:
        whole = moe.layout.outer_params if params == work.pre.params else 0
    held = whole / moe.ep / program.plan.tp * expert_layout(program.plan)[1]
    return [(local - whole / program.plan.tp, program.grad_levels), (held, moe.grad_levels)]


def expert_layout(plan: Any) -> tuple[int, int]:
    """(stride of an ep group over the ranks, factor on the experts' weights per rank over
    whole / ep / tp): (tp, 1) with the experts split over tp (etp = tp); (1, tp) with etp = 1,
    the experts whole on every rank and tp folded into the expert ranks."""
    folded = expert_tp(plan) == 1 < plan.tp
    return (1, plan.tp) if folded else (plan.tp, 1)


def expert_dp(plan: Any) -> int:
    """Ranks holding the same experts, over which their gradients reduce and ZeRO shards:
    dp x cp / ep, or tp x dp x cp / ep with etp = 1."""
    return plan.dp_cp * expert_layout(plan)[1] // plan.ep
