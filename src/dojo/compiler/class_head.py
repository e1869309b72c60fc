"""A classification head that tensor parallelism keeps whole on every rank, as Megatron does.

Megatron splits the output layer only on the vocabulary-parallel path: GPT's head tied to the
vocabulary-parallel embedding, or an untied output layer over the vocabulary
(ColumnParallelLinear without gather, followed by the vocab-parallel cross entropy). Any other
head is a plain linear on a replicated tensor: Megatron's ViT (`VitClassificationHead`,
`megatron/legacy/model/vision/classification.py`) is two torch.nn.Linear on the class token
after the final LayerNorm, whole on every tp rank, with a whole cross entropy. So, from the
structure, a *class head* is the last weight op before the loss (no weight op reads its output,
directly or through other ops, in forward), whose input is whole on every rank (not in the tp
split), and which is not over the vocabulary (its weight is not the vocabulary table and its
output features are not the table's rows). It runs whole on every rank (its FLOPs, weights and
their gradients) and leaves nothing to reduce: its logits are whole, so the loss needs no row
statistics, and its input gradient is whole (no f all-reduce). Treated as a replicated linear
(`compiler.replicated`), which is what Megatron does with it.

A head whose input is split (a CNN whose last convolution is column-parallel, so the pooled
features are split by channel) stays row-parallel: its partial logits are all-reduced, which is
cheaper than gathering its input.
"""

from __future__ import annotations

from dojo.compiler import fusion, replicated, tp_partial
from dojo.graph import Graph, Op
from dojo.graph.analysis import root


def candidates(graph: Graph, weights: set[int]) -> dict[int, frozenset[int]]:
    """Forward op id -> root ids of its weight and bias, for each weight op that could be a
    class head:
    the last weight op before the loss, not over the vocabulary (whether its input is whole is
    the caller's check). `weights`: the weight-derived root ids (`tpflow.weight_derived`)."""
    vocab = tp_partial.vocab_table(graph)
    rows = graph.tensors[vocab].shape[0] if vocab is not None else None
    forward = [op for op in graph.ops if op.phase == "forward"]
    reaches: set[int] = set()  # roots from which a forward weight op is reachable
    out: dict[int, frozenset[int]] = {}
    for op in reversed(forward):
        outs = {root(graph, t).id for t in op.outputs}
        acts = [r for r in (root(graph, t).id for t in op.inputs) if r not in weights]
        params = [r for r in (root(graph, t).id for t in op.inputs) if r in weights]
        matrix = op.rule in fusion.MATRIX_RULES and tp_partial.weight_op(op) and len(acts) == 1
        if matrix and params and not outs & reaches and op.outputs and \
                vocab not in params and graph.tensors[op.outputs[0]].shape[-1] != rows:
            out[op.id] = frozenset(params)
        if matrix or outs & reaches:
            reaches.update(acts)
    return out


def whole_weights(graph: Graph, weights: set[int], split: set[int]) -> frozenset[int]:
    """Root ids of the weights tp keeps whole on every rank: those the model declares
    (`replicated.replicated_weights`) and the class heads' (`candidates` whose input is not in
    `split`, the tp dataflow's split region)."""
    keep = replicated.replicated_weights(graph)
    by_id = {op.id: op for op in graph.ops}
    heads = [w for i, w in candidates(graph, weights).items()
             if not _input_split(graph, by_id[i], weights, split)]
    return keep.union(*heads)


def _input_split(graph: Graph, op: Op, weights: set[int], split: set[int]) -> bool:
    """Whether the weight op's activation input is in the tp split region."""
    return any(r in split for r in (root(graph, t).id for t in op.inputs) if r not in weights)
