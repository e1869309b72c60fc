"""Per-device work of one micro-batch, from the captured graph and the plan's tensor split.

The graph is captured at the plan's micro-batch size. Its ops fall into three sections: `pre`
(before the repeated block: embeddings), the block template (executed `repeat` times) and `post`
(after it: final norm, head, loss). Tensor parallelism follows Megatron-LM: matmul, convolution
and attention ops (FLOP-counter ops) split `tp` ways; vector ops on the residual stream (norms,
residual adds, dropout on the full hidden state) stay replicated unless sequence parallelism
shards them; vector ops inside the split region divide by `tp`. The split region is found by
dataflow (`tp_split`): a weight matmul moves its activation between the replicated and the split
domain (column-parallel in, row-parallel out; their input-gradient matmuls the other way), and
every other op keeps its inputs' domain. Where the dataflow leaves the split region with partial
sums, or needs a split tensor whole, the tp group communicates (`tp_collectives`), for every
model alike: transformers, CNNs, MLPs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from dojo.capture.params import MODULES_KEY, param_sizes_by_section, tied_parameters
from dojo.compiler import class_head, code, fusion, kernelsave, replicated, tp_partial
from dojo.compiler.eager_cpu import (
    INNER_VIEWS,
    attached_views,
    attention_scores,
    eltwise_calls,
    onednn_calls,
    unfolded_elements,
)
from dojo.compiler.masks import dropout_masks, mask_excess
from dojo.compiler.modules import Selection, selection
from dojo.compiler.tpflow import (
    device_graph,
    split_region,
    tp_collectives,
    weight_derived,
)
from dojo.graph import Graph, Op, StateBytes, state_bytes
from dojo.graph.analysis import root
from dojo.graph.memo import per_graph

MATRIX_RULES = fusion.MATRIX_RULES
FREE_RULES = fusion.FREE_RULES


@dataclass(frozen=True)
class OpCost:
    """One op on one device: `flops` (FLOP), `bytes` moved (read + written), matrix or vector."""

    kind: str  # "matrix" or "vector"
    flops: float
    bytes: float
    target: str
    shape: tuple[int, int, int] = (0, 0, 0)  # GEMM output (batch, m, n) on this device; 0s: n/a
    out_bytes: float = 0.0  # of `bytes`, those of the GEMM's output on this device (matrix ops)
    pointwise: int = 0  # of its ATen ops (a fused group's), the elementwise ones (eager dispatch)
    library_calls: int = 0  # of its ops, calls into oneDNN with their setup (eager CPU only)
    unfolded: int = 0  # elements its im2col-path convolutions unfold (eager CPU only)
    inner_views: int = 0  # of its ops, `eager_cpu.INNER_VIEWS` (no dispatch of their own)
    views: int = 0  # view ops issued just before it (`eager_cpu.attached_views`; eager only)
    scores: float = 0.0  # attention score elements its CPU flash attention computes, here
    eltwise_calls: int = 0  # of its ops, exact GELUs run by oneDNN's eltwise (eager CPU only)
    # of its ops, those whose code a pass runs first (`compiler.code`), not elementwise and
    # elementwise (eager CPU only)
    cold_calls: int = 0
    cold_pointwise: int = 0


@dataclass(frozen=True)
class SectionWork:
    """Work of one section for one micro-batch on one device, per phase."""

    forward: tuple[OpCost, ...]
    backward: tuple[OpCost, ...]
    recompute_selective: tuple[OpCost, ...]
    saved_bytes: float        # activations kept for backward, per micro-batch, this device
    selective_saved: float    # of which the attention core's (selective) or a policy's drops
    input_bytes: float        # bytes of the section's input (kept under full recompute)
    params: int  # trainable parameters of the section, replicated ones x tp (params / tp: a rank's)
    # The tp group's collectives, (kind, bytes per member), in issue order (`tp_collectives`)
    tp_forward: tuple[tuple[str, float], ...] = ()
    tp_backward: tuple[tuple[str, float], ...] = ()
    param_tensors: int = 0    # trainable parameter tensors of the section (one block instance)
    tp_recompute: tuple[tuple[str, float], ...] = ()  # a module policy's replayed collectives
    code: frozenset[str] = frozenset()  # call sites of its ops (`compiler.code.section_keys`)


@dataclass(frozen=True)
class ModelWork:
    """The step's work split into sections; `block` is one instance of the repeated block."""

    pre: SectionWork
    block: SectionWork | None
    post: SectionWork
    repeat: int
    residual_bytes: float     # one micro-batch's residual stream (pipeline p2p payload)
    residual_numel: int
    optimizer_bytes_per_param: float
    optimizer_flops_per_param: float
    param_count: int
    optimizer_state_bytes: float  # whole model, as captured (FP32)
    forward_flops: float      # whole model, one micro-batch, unsplit
    backward_flops: float
    # Parameters both ends read (a tied embedding, `params.tied_parameters`), one entry per
    # tensor, counted as `SectionWork.params` (/ tp: a rank's); held by the 'pre' section.
    tied: tuple[int, ...] = ()
    # tp > 1 splits a vocabulary table by rows ('pre' embedding, 'post' loss: `vocab_host`)
    vocab_parallel: bool = False
    modules: int = 0  # the model's nn.Modules (capture's `MODULES_KEY`): an eager step walks them


def _section_of(graph: Graph, block: str | None) -> list[str]:
    """Label each op 'pre', 'block' or 'post' by its position relative to the block's ops."""
    labels = []
    for phase in ("forward", "backward", "optimizer"):
        seen_block = False
        for op in graph.ops:
            if op.phase != phase:
                continue
            if block is not None and op.block == block:
                seen_block = True
                labels.append("block")
            elif phase == "backward":
                labels.append("pre" if seen_block else "post")
            else:
                labels.append("post" if seen_block else "pre")
    return labels


def _group_cost(group: list[Op], moved: float, tp: int, sp: bool, residual_numel: int,
                graph: Graph, scale: float, split: set[int], keep: frozenset[int]) -> OpCost:
    """One kernel on one device of the tp split (see the module docstring for the rule)."""
    flops = sum(op.flops for op in group)
    target = group[0].target if len(group) == 1 else f"fused[{len(group)}]"
    if group[0].rule in MATRIX_RULES:
        op = group[0]
        ins = any(root(graph, t).id in split for t in op.inputs)
        out = any(root(graph, t).id in split for t in op.outputs)
        # Split by the dataflow: a matrix op touching no split tensor (camera geometry on the
        # inputs) runs whole on every rank unless sequence parallelism shards it; one that
        # leaves the split region (row-parallel) keeps its output whole and splits k.
        div = tp if (sp or ins or out or not split) else 1
        if replicated.reads(graph, op, keep):  # whole; on the sequence shard under sp
            div, ins = (tp if sp else 1), False
        shape = _gemm_shape(op, graph, div, whole=(ins and not out) or
                            (not split and _output_is_residual(op, graph, residual_numel)))
        made = graph.tensors[op.outputs[0]] if op.outputs else None
        item = made.bytes / max(1, math.prod(made.shape)) if made is not None else 0.0
        return OpCost("matrix", flops / div, moved * scale / div, target, shape,
                      out_bytes=math.prod(shape) * item * scale)
    outs = [t for op in group for t in op.outputs]
    if not outs:
        return OpCost("vector", flops, moved * scale, target)
    big = max(outs, key=lambda t: math.prod(graph.tensors[t].shape))
    div = tp if _is_split(graph, big, sp, residual_numel, split) else 1
    return OpCost("vector", flops / div, moved * scale / div, target)


def _is_split(graph: Graph, tensor: int, sp: bool, residual_numel: int, split: set[int]) -> bool:
    """Whether one device of the tp group holds 1/tp of `tensor`: inside the split region, or
    anywhere with sequence parallelism. Outside the split region every rank holds the whole
    tensor and runs its ops whole (a CNN's BatchNorm after a row-parallel convolution, as a
    transformer's residual LayerNorm)."""
    del residual_numel  # the split region comes from the dataflow, residual stream or not
    return sp or root(graph, tensor).id in split


def _output_is_residual(op: Op, graph: Graph, residual_numel: int) -> bool:
    """Whether the op's output is the size of the residual stream (or smaller)."""
    return bool(op.outputs) and math.prod(graph.tensors[op.outputs[0]].shape) <= residual_numel


def _gemm_shape(op: Op, graph: Graph, tp: int, whole: bool) -> tuple[int, int, int]:
    """(batch, m, n) of a matmul or convolution's output on one device of the tp split.

    Row-parallel ops (`whole`: they leave the split region) split the reduction dimension and
    keep their output; batched matmuls split heads, i.e. the batch; other ops split their
    larger output dimension (column-parallel, weight gradients).
    """
    if not op.outputs:
        return (0, 0, 0)
    out = graph.tensors[op.outputs[0]].shape
    if "convolution" in op.target and len(out) == 4:
        b, m, n = 1, out[0] * out[2] * out[3], out[1]
    elif "mm" in op.target and len(out) in (2, 3):
        b, m, n = (1, *out) if len(out) == 2 else out
    else:
        return (0, 0, 0)
    if tp > 1 and b > 1:
        b = max(1, b // tp)
    elif tp > 1 and not whole:
        m, n = (m // tp, n) if m >= n else (m, n // tp)
    return (b, max(1, m), max(1, n))


def is_attention_core(op: Op, graph: Graph) -> bool:
    """The ops selective recompute replays (Korthikanti et al. 2022): the attention core, i.e.
    a fused attention op, or the batched matmuls, softmax and dropout on (S, S) scores."""
    if "attention" in op.target:
        return True
    if op.rule in FREE_RULES:
        return False
    for t in op.outputs:
        shape = graph.tensors[t].shape
        if len(shape) >= 3 and shape[-1] == shape[-2] and shape[-1] > 1:
            return True
    return "bmm" in op.target and not _reads_expert_weight(op, graph)


def _replays(op: Op, graph: Graph, sel: Selection | None) -> bool:
    """Whether the selective slots rerun `op`: a module policy's op, else the attention core."""
    return op.id in sel.ops if sel is not None else is_attention_core(op, graph)


def _reads_expert_weight(op: Op, graph: Graph) -> bool:
    """A routed experts' grouped GEMM: it reads a parameter named `*.experts.*` (the naming
    contract of dojo.models.moe), so it is a weight GEMM, not attention."""
    for i in op.inputs:
        t = graph.tensors[root(graph, i).id]
        if t.role == "parameter" and ".experts." in f".{t.name}":
            return True
    return False


def main_block(graph: Graph) -> str | None:
    """The repeated block pipeline stages are cut on: the one executed most often."""
    if not graph.blocks:
        return None
    return max(graph.blocks, key=lambda b: (b.repeat, b.params)).name


def model_work(graph: Graph, tp: int = 1, sp: bool = False, scale: float = 1.0,
               fuse: str = "full", fused_attention: bool = True,
               modules: frozenset[str] = frozenset()) -> ModelWork:
    """Split the graph's micro-batch work by section for one device of a `tp`-way split.

    `scale` converts captured bytes to the plan's precision (0.5 for BF16 from an FP32 capture).
    `fused_attention`: the device runs `scaled_dot_product_attention` as one fused kernel
    whatever its dropout (GPUs' FlashAttention), so the math fallback a CPU capture recorded
    is replaced by it (`fusion.fuse_attention`); False times the capture as it ran (a CPU,
    whose fused kernel has no dropout). `modules`: the selective slots hold these Megatron
    modules' recompute (`compiler.modules`) instead of the attention core's.
    """
    graph = device_graph(graph, fused_attention)
    facts, kern = _facts(graph), _kernels(graph, fuse)
    block, residual_numel, labels = facts.block, facts.residual_numel, list(facts.labels)
    sel = (selection(graph, modules, lambda o: is_attention_core(o, graph))
           if modules else None)
    costs: dict[tuple[str, str], list[OpCost]] = {}
    selective: dict[str, list[OpCost]] = {}
    readers = _consumers(graph)
    weights = weight_derived(graph)
    split, keep = _tp_region(graph) if tp > 1 else (set(), frozenset())
    masks = set(facts.masks)
    for i, (group, label) in enumerate(kern.grouped):
        # The loss over the logits runs in FP32 under mixed precision (autocast's FP32 ops,
        # Megatron-LM's `output.float()` before its cross entropy).
        here = 1.0 if i in kern.loss else scale
        moved = kern.moved[i]
        moved -= mask_excess(graph, group, readers, masks, here)
        cost = _group_cost(group, moved, tp, sp, residual_numel, graph, here, split, keep)
        cost = replace(cost, pointwise=kern.pointwise[i], library_calls=kern.calls[i],
                       unfolded=kern.unfolded[i], inner_views=kern.inner[i], views=kern.views[i],
                       eltwise_calls=kern.eltwise[i], cold_calls=kern.cold[i][0],
                       cold_pointwise=kern.cold[i][1],
                       scores=_device_share(kern.scores[i], cost.flops, group))
        costs.setdefault((label, group[0].phase), []).append(cost)
        if group[0].phase == "forward" and (
                kern.core[i] if sel is None else any(_replays(o, graph, sel) for o in group)):
            selective.setdefault(label, []).append(cost)
    kept = weights | kern.recomputed  # not saved either
    saved, attn_saved = _saved(graph, facts.producer, (tp, sp, residual_numel), scale,
                               split, kept, masks, sel, kern.fp32)
    params = _held_params(graph, tp)
    tied = tuple(math.prod(graph.tensors[r].shape) * (tp if r in keep else 1)
                 for r in facts.tied)
    residual_bytes = residual_numel * 4 * scale
    comms = dict(_tp_comms(graph, sp, scale)) if tp > 1 else {}
    if sel is not None and tp > 1:  # the modules' own collectives, replayed by their rerun
        mine = [f"{lab} rerun" if o.id in sel.ops else "" for o, lab in zip(graph.ops, labels)]
        rerun = tp_collectives(graph, mine, weights, split, sp, scale, at_f=False)
        comms |= {(lab, "rerun"): rerun.get((f"{lab} rerun", "forward"), [])
                  for lab in ("pre", "block", "post")}

    def section(label: str) -> SectionWork:
        return SectionWork(forward=tuple(costs.get((label, "forward"), ())),
                           backward=tuple(costs.get((label, "backward"), ())),
                           recompute_selective=tuple(selective.get(label, ())),
                           saved_bytes=saved.get(label, 0.0),
                           selective_saved=attn_saved.get(label, 0.0),
                           input_bytes=residual_bytes / (tp if sp else 1),
                           params=params.get(label, 0),
                           tp_forward=tuple(comms.get((label, "forward"), ())),
                           tp_backward=tuple(comms.get((label, "backward"), ())),
                           param_tensors=facts.tensors.get(label, 0),
                           tp_recompute=tuple(comms.get((label, "rerun"), ())),
                           code=dict(kern.keys).get(label, frozenset()))

    totals, state, (fwd, bwd) = facts.totals, facts.state, facts.flops
    count = max(1, state.param_count)
    return ModelWork(pre=section("pre"), block=section("block") if block else None,
                     post=section("post"), repeat=facts.repeat, residual_bytes=residual_bytes,
                     residual_numel=residual_numel,
                     optimizer_bytes_per_param=totals[1] / count,
                     optimizer_flops_per_param=totals[0] / count,
                     param_count=state.param_count,
                     optimizer_state_bytes=float(state.optimizer_state),
                     forward_flops=float(fwd), backward_flops=float(bwd), tied=tied,
                     vocab_parallel=tp > 1 and tp_partial.vocab_table(graph) is not None,
                     modules=int(dict(graph.meta).get(MODULES_KEY, 0)))


@dataclass(frozen=True)
class _Facts:
    """What `model_work` reads of a graph whatever the plan (`_facts`; shared: read only)."""

    block: str | None
    repeat: int
    residual_numel: int
    labels: tuple[str, ...]
    producer: dict[int, tuple[Op, str]]  # root id -> (first op making it, its section)
    masks: frozenset[int]
    sizes: dict[str, list[int]]          # `param_sizes_by_section`
    tensors: dict[str, int]              # parameter tensors per section
    tied: tuple[int, ...]                # `tied_parameters`
    totals: tuple[float, float]          # `_optimizer_totals`
    state: StateBytes
    flops: tuple[float, float]           # whole model, forward and backward, unsplit


@per_graph()
def _facts(graph: Graph) -> _Facts:
    block = main_block(graph)
    labels = _labels(graph)
    producer: dict[int, tuple[Op, str]] = {}
    for op, label in zip(graph.ops, labels):
        for t in op.outputs:
            producer.setdefault(root(graph, t).id, (op, label))
    sizes = param_sizes_by_section(graph, block, list(labels))
    fwd = sum(graph.repeat_of(o.block) * o.flops for o in graph.ops if o.phase == "forward")
    bwd = sum(graph.repeat_of(o.block) * o.flops for o in graph.ops if o.phase == "backward")
    return _Facts(block, graph.repeat_of(block), _residual_numel(graph), labels, producer,
                  frozenset(dropout_masks(graph)), sizes,
                  {label: len(v) for label, v in sizes.items()},
                  tuple(tied_parameters(graph, block, list(labels))),
                  _optimizer_totals(graph), state_bytes(graph), (fwd, bwd))


def _device_share(whole: int, flops: float, group: list[Op]) -> float:
    """Of `whole` (a count in proportion to the group's FLOPs), one device's: the share of the
    group's FLOPs its cost kept (a tp split of the heads divides both)."""
    total = sum(o.flops for o in group)
    return whole * flops / total if whole and total else float(whole)


@dataclass(frozen=True)
class _Kernels:
    """A graph's kernels under one fusion setting and what `model_work` reads of each whatever
    the plan (`_kernels`; per group, in `fusion.groups` order; shared: read only)."""

    grouped: list[tuple[list[Op], str]]
    loss: frozenset[int]                 # `fusion.loss_groups`
    moved: tuple[float, ...]             # `fusion.fused_bytes`, as float
    pointwise: tuple[int, ...]           # elementwise ops
    calls: tuple[int, ...]               # `onednn_calls`
    eltwise: tuple[int, ...]             # `eltwise_calls`
    cold: tuple[tuple[int, int], ...]    # `code.cold_marks`
    keys: tuple[tuple[str, frozenset[str]], ...]  # `code.section_keys`, by label
    unfolded: tuple[int, ...]            # `unfolded_elements`
    inner: tuple[int, ...]               # ops in `INNER_VIEWS`
    views: tuple[int, ...]               # `attached_views`
    scores: tuple[int, ...]              # `attention_scores`
    core: tuple[bool, ...]               # an attention-core op in it (selective recompute)
    recomputed: frozenset[int]           # `kernelsave.recomputed`
    fp32: frozenset[int]                 # the loss's forward ops


@per_graph()
def _kernels(graph: Graph, fuse: str) -> _Kernels:
    grouped = fusion.groups(graph, list(_labels(graph)), fuse)
    loss = fusion.loss_groups(grouped)
    readers = _consumers(graph)
    sites = code.code_sites(graph)
    return _Kernels(
        grouped, frozenset(loss),
        tuple(float(fusion.fused_bytes(graph, g, readers)) for g, _ in grouped),
        tuple(sum(o.rule == "pointwise" for o in g) for g, _ in grouped),
        tuple(onednn_calls(g, graph) for g, _ in grouped),
        tuple(eltwise_calls(g, graph) for g, _ in grouped),
        code.cold_marks(grouped, sites),
        tuple(sorted(code.section_keys(graph.ops, _labels(graph), sites).items())),
        tuple(unfolded_elements(g, graph) for g, _ in grouped),
        tuple(sum(o.target in INNER_VIEWS for o in g) for g, _ in grouped),
        attached_views(graph, [g for g, _ in grouped]),
        tuple(attention_scores(g, graph) for g, _ in grouped),
        tuple(any(is_attention_core(o, graph) for o in g) for g, _ in grouped),
        kernelsave.recomputed(graph, grouped, weight_derived(graph)),
        frozenset(o.id for i in loss for o in grouped[i][0] if o.phase == "forward"))


@per_graph()
def _held_params(graph: Graph, tp: int) -> dict[str, int]:
    """`replicated.held_params` of the graph's sections under a tp split (shared: read only)."""
    facts = _facts(graph)
    keep = _tp_region(graph)[1] if tp > 1 else frozenset()
    return replicated.held_params(facts.sizes, graph, keep, facts.block, list(facts.labels), tp)


@per_graph()
def _labels(graph: Graph) -> tuple[str, ...]:
    """`_section_of` the graph's main block, memoized per graph."""
    return tuple(_section_of(graph, main_block(graph)))


@per_graph()
def _consumers(graph: Graph) -> dict[int, set[int]]:
    """`fusion.consumers`, memoized per graph (shared: read only)."""
    return fusion.consumers(graph)


def _residual_numel(graph: Graph) -> int:
    """Elements of the main block's carry (its residual stream); 0 without one."""
    block = main_block(graph)
    if block is None or not graph.block(block).carry:
        return 0
    return math.prod(graph.tensors[graph.block(block).carry[0][0]].shape)


def _tp_region(graph: Graph) -> tuple[set[int], frozenset[int]]:
    """(split region, weights kept whole) of `model_work`'s tp dataflow (tp > 1), memoized per
    graph; the split region a fresh set."""
    split, keep = _tp_region_held(graph)
    return set(split), keep


@per_graph()
def _tp_region_held(graph: Graph) -> tuple[frozenset[int], frozenset[int]]:
    split = split_region(graph, _residual_numel(graph) > 0)
    return frozenset(split), class_head.whole_weights(graph, weight_derived(graph), split)


@per_graph()
def _tp_comms(graph: Graph, sp: bool, scale: float
              ) -> dict[tuple[str, str], list[tuple[str, float]]]:
    """`model_work`'s `tp_collectives` (tp > 1), memoized per graph, sp and scale (shared:
    read only)."""
    split, _ = _tp_region(graph)
    return tp_collectives(graph, list(_labels(graph)), weight_derived(graph), split, sp, scale)


def _saved(graph: Graph, producer: dict[int, tuple[Op, str]], split_of: tuple[int, bool, int],
           scale: float, split: set[int], weights: set[int], masks: set[int],
           sel: Selection | None, fp32: frozenset[int] = frozenset()
           ) -> tuple[dict[str, float], dict[str, float]]:
    """Bytes kept from forward for backward, per section, on one device of the split
    (`split_of` = tp, sp, residual numel). Tensors made from weights alone are not activations;
    dropout masks count 1 byte per element; norm and attention statistics stay FP32, and so do
    the outputs of the ops in `fp32` (the loss's kernels: autocast's FP32 log-softmax,
    Megatron-LM's `output.float()` before its cross entropy, which keeps the FP32 softmax)."""
    tp, sp, residual_numel = split_of
    saved: dict[str, float] = {}
    attn: dict[str, float] = {}
    seen: set[int] = set()
    for op in graph.ops:
        if op.phase != "backward":
            continue
        for t in op.inputs:
            r = root(graph, t)
            made = producer.get(r.id)
            if (r.id in seen or made is None or made[0].phase != "forward"
                    or r.id in weights):
                continue
            seen.add(r.id)
            div = tp if _is_split(graph, r.id, sp, residual_numel, split) else 1
            if r.id in masks:
                size = math.prod(r.shape) / div
            elif _is_statistic(made[0], r.id) or made[0].id in fp32:
                size = r.bytes / div
            else:
                size = r.bytes * (scale if r.dtype.startswith("float") else 1.0) / div
            saved[made[1]] = saved.get(made[1], 0.0) + size
            if sel.drops(made[0], r.id) if sel else is_attention_core(made[0], graph):
                attn[made[1]] = attn.get(made[1], 0.0) + size
    return saved, attn


def _is_statistic(op: Op, tensor: int) -> bool:
    """A norm's saved mean and 1/std, a fused attention kernel's row logsumexp (and RNG state):
    kept in FP32 (as captured) whatever the compute precision, as mixed-precision kernels
    (apex's and Megatron-LM's LayerNorm, FlashAttention) keep them."""
    stats = "attention" in op.target or op.rule == "norm_softmax"
    return stats and tensor in op.outputs[1:]


def _optimizer_totals(graph: Graph) -> tuple[float, float]:
    flops = sum(graph.repeat_of(o.block) * o.flops for o in graph.ops if o.phase == "optimizer")
    moved = sum(graph.repeat_of(o.block) * (o.bytes_read + o.bytes_written)
                for o in graph.ops if o.phase == "optimizer")
    return float(flops), float(moved)
