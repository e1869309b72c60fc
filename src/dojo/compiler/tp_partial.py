"""The partial sums the tp dataflow leaves on each rank (`dojo.compiler.tpflow.tp_collectives`).

A row-parallel linear's output in forward, a column-parallel linear's input gradient in backward
(Megatron's f conjugate) and a vocabulary-parallel lookup are partial sums over the tp group.
In backward, the input gradients of the column-parallel linears that read one tensor (Llama's
wq, wk, wv on the attention norm's output; its w1, w3 on the MLP norm's) are added by autograd
before anything else reads them: Megatron-LM applies f once to that shared input
(`copy_to_tensor_model_parallel_region` in ColumnParallelLinear, on QKV fused into one linear
and gate/up into one fc1), so the group reduces the sum once, with the bytes of that one
tensor, not each linear's part (`grad_sums`).
"""

from __future__ import annotations

from dojo.compiler import fusion, replicated
from dojo.graph import Graph, Op
from dojo.graph.analysis import root

ADDS = ("aten.add.", "aten.add_.")  # autograd's accumulation of a tensor's gradients


def weight_op(op: Op) -> bool:
    """A matmul or convolution: with a weight as its other operand it is a Megatron linear."""
    return "mm" in op.target or "convolution" in op.target


def input_grad(graph: Graph, op: Op) -> int | None:
    """The input gradient of a convolution's fused backward (outputs[0] shaped as the forward
    input, inputs[1]); None for other ops or when no input gradient is computed."""
    if "convolution_backward" not in op.target or len(op.inputs) < 2 or not op.outputs:
        return None
    grad = op.outputs[0]
    return grad if graph.tensors[grad].shape == graph.tensors[op.inputs[1]].shape else None


def partial_bytes(graph: Graph, op: Op, acts: list[int], split: set[int],
                  vocab: int | None) -> float:
    """Captured bytes of the partial sums `op` leaves on each rank (0: none)."""
    if op.rule in fusion.MATRIX_RULES and weight_op(op) and len(acts) == 1 and acts[0] in split:
        return float(graph.tensors[op.outputs[0]].bytes)
    grad = input_grad(graph, op)
    if grad is not None and root(graph, op.inputs[0]).id in split and \
            root(graph, op.inputs[1]).id not in split:
        return float(graph.tensors[grad].bytes)
    if vocab is not None and op.phase == "forward" and "embedding" in op.target and \
            vocab in {root(graph, t).id for t in op.inputs}:
        return float(graph.tensors[op.outputs[0]].bytes)
    return 0.0


def vocab_table(graph: Graph) -> int | None:
    """Root id of the largest table an embedding lookup reads (the vocabulary), if any."""
    tables = [root(graph, t) for op in graph.ops
              if op.phase == "forward" and op.target.startswith("aten.embedding.")
              for t in op.inputs if graph.tensors[t].role == "parameter"]
    return max(tables, key=lambda t: t.shape[0]).id if tables else None


def grad_sums(graph: Graph, weights: set[int], split: set[int], keep: frozenset[int]
              ) -> dict[int, float]:
    """Backward op id -> captured bytes of the partial input gradient the tp group reduces after
    it: a column-parallel input gradient read by no sum of partials, or the last add of such a
    sum (its output's bytes); 0.0 for an input gradient or add whose partial goes on into a sum
    (reduced there, once). Adds mixing a partial with a whole tensor end the sum before them.
    `keep`: root ids of the weights kept whole on every rank (`class_head.whole_weights`)."""
    open_: dict[int, tuple[int, float]] = {}  # root of a partial -> (op that made it, bytes)
    out: dict[int, float] = {}
    for op in graph.ops:
        if op.phase != "backward" or not op.outputs or replicated.reads(graph, op, keep):
            continue
        acts = [r for r in (root(graph, t).id for t in op.inputs) if r not in weights]
        made = root(graph, op.outputs[0]).id
        if op.target.startswith(ADDS) and acts and all(a in open_ for a in acts):
            for a in dict.fromkeys(acts):
                out[open_.pop(a)[0]] = 0.0  # summed locally, before the one collective
            open_[made] = (op.id, float(graph.tensors[op.outputs[0]].bytes))
        elif (size := partial_bytes(graph, op, acts, split, None)):
            grad = input_grad(graph, op)
            open_[made if grad is None else root(graph, grad).id] = (op.id, size)
    out |= dict(open_.values())
    return out
