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

from dojo.capture.params import param_sizes_by_section, tied_parameters
from dojo.compiler import class_head, fusion, kernelsave, replicated, tp_partial
from dojo.compiler.eager_cpu import onednn_calls
from dojo.compiler.masks import dropout_masks, mask_excess
from dojo.compiler.modules import Selection, selection
from dojo.compiler.row_stats import row_stat_counts
from dojo.compiler.tp_partial import input_grad as _input_grad
from dojo.compiler.tp_partial import weight_op as _weight_op
from dojo.graph import Graph, Op, state_bytes
from dojo.graph.analysis import root

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


def weight_derived(graph: Graph) -> set[int]:
    """Root ids of the tensors made from parameters, buffers and constants alone (a weight's
    transpose or cast, a causal mask): they exist once per step, not per micro-batch, and are
    not activations; every other tensor of the step derives from its inputs."""
    weights = {t.id for t in graph.tensors if t.role in ("parameter", "buffer")}
    for op in graph.ops:
        if op.phase != "optimizer" and all(root(graph, t).id in weights for t in op.inputs):
            weights.update(root(graph, t).id for t in op.outputs)
    return weights


def tp_split(graph: Graph, weights: set[int], whole_stem: bool = False) -> set[int]:
    """Root ids of the tensors Megatron-style tensor parallelism splits (see the module doc):
    a matmul or convolution with one activation input (`weights` are not activations) flips
    its domain, any other op's outputs are split when one of its activation inputs is.
    `whole_stem` (models with a residual stream): a weight op on the model's input data (ViT's
    patch embedding) stays whole on every rank, as Megatron-LM keeps it, so that the stream it
    feeds is replicated and the blocks' pairs start at their first linear. A linear the model
    declares replicated (`compiler.replicated`), or a class head on a whole input
    (`compiler.class_head`), outputs a whole tensor on every rank."""
    split: set[int] = set()
    keep = replicated.replicated_weights(graph)
    heads = class_head.candidates(graph, weights)
    for op in graph.ops:
        acts = [r for r in (root(graph, t).id for t in op.inputs) if r not in weights]
        if op.id in heads and not any(a in split for a in acts):
            keep |= heads[op.id]
        if op.phase == "optimizer" or not acts or replicated.reads(graph, op, keep):
            continue
        outs = {root(graph, t).id for t in op.outputs}
        if op.rule in MATRIX_RULES and _weight_op(op) and len(acts) == 1:
            if whole_stem and graph.tensors[acts[0]].role == "input":
                continue
            if acts[0] not in split:
                split |= outs
        elif _input_grad(graph, op) is not None:
            # A convolution's backward in one op: its input gradient lies in the domain of
            # the forward input (inputs[1]), its weight and bias gradients are split.
            grad_in = root(graph, op.outputs[0]).id
            split |= outs - {grad_in}
            if root(graph, op.inputs[1]).id in split:
                split.add(grad_in)
        elif any(a in split for a in acts):
            split |= outs
    return split


def tp_collectives(graph: Graph, labels: list[str], weights: set[int], split: set[int],
                   sp: bool, scale: float, at_f: bool = True
                   ) -> dict[tuple[str, str], list[tuple[str, float]]]:
    """The tp group's collectives by (section, phase), found where the dataflow leaves the split
    region or needs the whole of a split tensor, as (kind, bytes per member):
    - a weight matmul or convolution whose input is split (row-parallel) produces partial sums:
      an all-reduce of its output (Megatron's g). Its conjugate (f) is the input gradient of a
      column-parallel op in backward: the same flip, found the same way (a convolution's fused
      backward by `_input_grad`), once per shared input: the input gradients of the linears
      reading one tensor are summed before it is reduced (`tp_partial.grad_sums`). With
      sequence parallelism each becomes a reduce-scatter and an all-gather of the same bytes.
      With sp a column-parallel linear also keeps only the sequence shard of its input for
      backward (`_is_split`, as Megatron-LM's LinearWithGradAccumulationAndAsyncCommunication
      and TransformerEngine's LayerNormLinear save it) and all-gathers it again there for its
      weight gradient: one more all-gather of those bytes per shared input, in backward.
      A model that declares replicated linears (`replicated`: the MoE decoders) has each
      all-gather counted at the f it feeds (`replicated.sp_pairs`), not paired with a
      reduce-scatter: MLA's latents are narrower than the residual stream that g reduces
      (`at_f`; a module policy's rerun, labelled by forward ops, keeps the pairing);
    - a lookup into the vocabulary (the largest embedding table, split by rows as Megatron's
      VocabParallelEmbedding; smaller tables stay whole) gives partial rows: an all-reduce;
    - a norm, softmax or loss over features split by a column-parallel op all-reduces its
      per-row FP32 statistics (`row_stats`; a cross entropy's in forward
      only), forward and backward; a softmax over scores split by heads, or a BatchNorm's
      per-channel statistics, need none;
    - a replicated linear whose output gradient is partial (`replicated.partial_bytes`).
    A class head on a whole input (`class_head`) is replicated: whole logits, no statistics.
    Bytes are at the plan's precision (`scale`), statistics in FP32."""
    made_by: dict[int, Op] = {}
    for op in graph.ops:
        for t in op.outputs if op.rule not in FREE_RULES else ():
            made_by.setdefault(root(graph, t).id, op)
    vocab, keep = tp_partial.vocab_table(graph), class_head.whole_weights(graph, weights, split)
    sums = tp_partial.grad_sums(graph, weights, split, keep)
    declared = at_f and bool(replicated.replicated_weights(graph))
    by_id = {op.id: op for op in graph.ops}  # ids need not be positions (fused graphs)
    readers = {r: [by_id[i] for i in ids] for r, ids in fusion.consumers(graph).items()}
    out: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for op, label in zip(graph.ops, labels):
        if op.phase == "optimizer":
            continue
        acts = [r for r in (root(graph, t).id for t in op.inputs) if r not in weights]
        comms = out.setdefault((label, op.phase), [])
        kept = replicated.partial_bytes(graph, op, acts, split, made_by, keep)
        partial = kept or sums.get(op.id, tp_partial.partial_bytes(graph, op, acts, split, vocab))
        if partial and sp and declared:  # f's all-gather at its own input (MoE decoders)
            for phase, pairs in replicated.sp_pairs(op.phase, bool(kept), partial * scale):
                out.setdefault((label, phase), []).extend(pairs)
        elif partial:
            kinds: tuple[str, ...] = ("reduce_scatter", "all_gather") if sp else ("all_reduce",)
            if sp and op.phase == "backward" and not kept:
                kinds += ("all_gather",)  # the saved sequence shard, gathered for the wgrad
            comms += [(k, partial * scale) for k in kinds]
        fwd, bwd = row_stat_counts(graph, op, made_by, readers)
        if (fwd or bwd) and acts and acts[0] in split and \
                _feature_split(graph, acts[0], made_by, weights):
            # a norm's saved mean has one element per row; else rows of the last dimension
            rows = (math.prod(graph.tensors[op.outputs[1]].shape) if "norm" in op.target
                    else math.prod(graph.tensors[op.inputs[0]].shape[:-1]))
            comms += [("all_reduce", 4.0 * rows * n) for n in fwd]
            out.setdefault((label, "backward"), []).extend(
                ("all_reduce", 4.0 * rows * n) for n in bwd)
    return out


def _feature_split(graph: Graph, tensor: int, made_by: dict[int, Op], weights: set[int]) -> bool:
    """Whether split `tensor` is split along its features: the first matrix op up its chain of
    producers is a column-parallel weight op (not a matmul of two activations, whose output is
    split by heads)."""
    t = tensor
    for _ in range(len(graph.ops)):
        op = made_by.get(t)
        if op is None:
            return False
        acts = [r for r in (root(graph, i).id for i in op.inputs) if r not in weights]
        if op.rule in MATRIX_RULES:
            return _weight_op(op) and len(acts) == 1
        if not acts:
            return False
        t = acts[0]
    return False


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
    if fused_attention and fusion.has_sdpa_fallback(graph):
        graph = fusion.fuse_attention(graph, weight_derived(graph))
    block = main_block(graph)
    repeat = graph.repeat_of(block)
    residual_numel = 0
    if block is not None and graph.block(block).carry:
        residual_numel = math.prod(graph.tensors[graph.block(block).carry[0][0]].shape)
    labels = _section_of(graph, block)
    sel = (selection(graph, modules, lambda o: is_attention_core(o, graph))
           if modules else None)
    costs: dict[tuple[str, str], list[OpCost]] = {}
    selective: dict[str, list[OpCost]] = {}
    producer: dict[int, tuple[Op, str]] = {}
    for op, label in zip(graph.ops, labels):
        for t in op.outputs:
            producer.setdefault(root(graph, t).id, (op, label))
    readers = fusion.consumers(graph)
    weights = weight_derived(graph)
    split = tp_split(graph, weights, whole_stem=residual_numel > 0) if tp > 1 else set()
    keep = class_head.whole_weights(graph, weights, split) if tp > 1 else frozenset()
    masks = dropout_masks(graph)
    grouped = fusion.groups(graph, labels, fuse)
    loss = _loss_groups(grouped)
    for i, (group, label) in enumerate(grouped):
        # The loss over the logits runs in FP32 under mixed precision (autocast's FP32 ops,
        # Megatron-LM's `output.float()` before its cross entropy).
        here = 1.0 if i in loss else scale
        moved = float(fusion.fused_bytes(graph, group, readers))
        moved -= mask_excess(graph, group, readers, masks, here)
        cost = _group_cost(group, moved, tp, sp, residual_numel, graph, here, split, keep)
        cost = replace(cost, pointwise=sum(o.rule == "pointwise" for o in group),
                       library_calls=onednn_calls(group, graph))
        costs.setdefault((label, group[0].phase), []).append(cost)
        if group[0].phase == "forward" and any(_replays(o, graph, sel) for o in group):
            selective.setdefault(label, []).append(cost)
    kept = weights | kernelsave.recomputed(graph, grouped, weights)  # not saved either
    fp32 = frozenset(o.id for i in loss for o in grouped[i][0] if o.phase == "forward")
    saved, attn_saved = _saved(graph, producer, (tp, sp, residual_numel), scale, split, kept,
                               masks, sel, fp32)
    sizes = param_sizes_by_section(graph, block, labels)
    params = replicated.held_params(sizes, graph, keep, block, labels, tp)
    tensors = {label: len(v) for label, v in sizes.items()}
    tied = tuple(math.prod(graph.tensors[r].shape) * (tp if r in keep else 1)
                 for r in tied_parameters(graph, block, labels))
    residual_bytes = residual_numel * 4 * scale
    comms = tp_collectives(graph, labels, weights, split, sp, scale) if tp > 1 else {}
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
                           param_tensors=tensors.get(label, 0),
                           tp_recompute=tuple(comms.get((label, "rerun"), ())))

    totals = _optimizer_totals(graph)
    state = state_bytes(graph)
    count = max(1, state.param_count)
    fwd = sum(graph.repeat_of(o.block) * o.flops for o in graph.ops if o.phase == "forward")
    bwd = sum(graph.repeat_of(o.block) * o.flops for o in graph.ops if o.phase == "backward")
    return ModelWork(pre=section("pre"), block=section("block") if block else None,
                     post=section("post"), repeat=repeat, residual_bytes=residual_bytes,
                     residual_numel=residual_numel,
                     optimizer_bytes_per_param=totals[1] / count,
                     optimizer_flops_per_param=totals[0] / count,
                     param_count=state.param_count,
                     optimizer_state_bytes=float(state.optimizer_state),
                     forward_flops=float(fwd), backward_flops=float(bwd), tied=tied)


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


def _loss_groups(grouped: list[tuple[list[Op], str]]) -> set[int]:
    """Indices of the vector kernels of the loss: in the `post` section, after its last forward
    matrix op (the head) and, in backward, before its first matrix op."""
    post = [(i, g) for i, (g, label) in enumerate(grouped) if label == "post"]
    fwd = [(i, g) for i, g in post if g[0].phase == "forward"]
    bwd = [(i, g) for i, g in post if g[0].phase == "backward"]
    heads = [i for i, g in fwd if g[0].rule in MATRIX_RULES]
    grads = [i for i, g in bwd if g[0].rule in MATRIX_RULES]
    if not heads or not grads:
        return set()
    return ({i for i, _ in fwd if i > heads[-1]} | {i for i, _ in bwd if i < grads[0]})


def _optimizer_totals(graph: Graph) -> tuple[float, float]:
    flops = sum(graph.repeat_of(o.block) * o.flops for o in graph.ops if o.phase == "optimizer")
    moved = sum(graph.repeat_of(o.block) * (o.bytes_read + o.bytes_written)
                for o in graph.ops if o.phase == "optimizer")
    return float(flops), float(moved)
