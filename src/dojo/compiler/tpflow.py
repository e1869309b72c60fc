"""The tensor-parallel dataflow of a captured graph (`work`'s module docstring): which tensors
Megatron-style tp splits (`tp_split`) and the collectives the tp group issues (`tp_collectives`),
with the weight-derived tensors both start from (`weight_derived`).

The compiler asks these of one capture under many plans; `split_region`, `device_graph` and
`weight_derived` answer each graph once (`dojo.graph.memo`)."""

from __future__ import annotations

import math

from dojo.compiler import class_head, fusion, replicated, tp_partial
from dojo.compiler.row_stats import row_stat_counts
from dojo.compiler.tp_partial import input_grad as _input_grad
from dojo.compiler.tp_partial import weight_op as _weight_op
from dojo.graph import Graph, Op
from dojo.graph.analysis import root
from dojo.graph.memo import per_graph

MATRIX_RULES = fusion.MATRIX_RULES
FREE_RULES = fusion.FREE_RULES

def weight_derived(graph: Graph) -> set[int]:
    """Root ids of the tensors made from parameters, buffers and constants alone (a weight's
    transpose or cast, a causal mask): they exist once per step, not per micro-batch, and are
    not activations; every other tensor of the step derives from its inputs. A fresh set (the
    memo's copy) the caller may change."""
    return set(_weight_derived(graph))


@per_graph()
def _weight_derived(graph: Graph) -> frozenset[int]:
    weights = {t.id for t in graph.tensors if t.role in ("parameter", "buffer")}
    for op in graph.ops:
        if op.phase != "optimizer" and all(root(graph, t).id in weights for t in op.inputs):
            weights.update(root(graph, t).id for t in op.outputs)
    return frozenset(weights)


def device_graph(graph: Graph, fused_attention: bool) -> Graph:
    """`graph` as the device runs it: with `fused_attention` and a capture that lowered SDPA to
    its math fallback, `fusion.fuse_attention` of it (memoized per graph), else `graph`."""
    return _fused(graph) if fused_attention else graph


@per_graph()
def _fused(graph: Graph) -> Graph:
    if not fusion.has_sdpa_fallback(graph):
        return graph
    return fusion.fuse_attention(graph, weight_derived(graph))


def split_region(graph: Graph, whole_stem: bool) -> set[int]:
    """`tp_split(graph, weight_derived(graph), whole_stem)`, memoized per graph; a fresh set."""
    return set(_split_region(graph, whole_stem))


@per_graph()
def _split_region(graph: Graph, whole_stem: bool) -> frozenset[int]:
    return frozenset(tp_split(graph, weight_derived(graph), whole_stem))


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
