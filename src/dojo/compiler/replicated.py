"""Linears that tensor parallelism keeps whole on every rank (Megatron's "duplicated" linears).

A model declares them: a module lists the children it wants replicated in a class attribute
`tp_replicated` (DeepSeek-V3's multi-latent attention: its down projections `q_a`, `kv_a`, as
Megatron-Core's MLASelfAttention builds linear_q_down_proj and linear_kv_down_proj with
TELinear(parallel_mode="duplicated"), no tp group), and the capture records their parameter
names in the graph's meta (`META_KEY`). The compiler's tp dataflow (`tpflow.tp_split`) then lets
such a linear keep its input's domain instead of flipping it: its output is whole on every rank,
so the up projection after it is column-parallel (heads split) and nothing is communicated
between them in forward. In backward the up projections' input gradients are partial sums (the
usual f conjugate, all-reduced or, with sp, reduce-scattered), and a tensor that reached the
split region through a broadcast (MLA's rotary key, shared by all heads) returns a partial
gradient too: its all-reduce (Megatron's reduce-scatter of k_pos_emb's gradient) is sized by
`partial_bytes`. A replicated linear runs whole on every rank (its FLOPs and weights), on 1/tp
of the tokens under sequence parallelism (TELinear on the sequence shard); its weights and
their gradients and optimizer state are held whole on every rank (`held_params`).

Under sp a model that declares replicated linears has its tp collectives placed where its
ranks issue them (`sp_pairs`): each f's all-gather at that f's input in forward (MLA's two
latents and its rotary key, narrower than the residual stream), each g's reduce-scatter in
forward and the all-gather of its gradient in backward (dojo.runtime.tensor_parallel_moe).
Not modelled: under sp the gradients of a replicated weight are partial per rank (computed on
its sequence shard) and Megatron all-reduces them over tp once per step (the parameters'
`sequence_parallel` attribute, as for the norms' weights); and a module policy's selective
recompute replays one all-gather with each reduce-scatter it replays, of the same bytes (an f's
all-gather is found from a backward op, which the rerun does not label), none for an up
projection rerun alone.
"""

from __future__ import annotations

import math
from dataclasses import replace

from dojo.capture.params import META_KEY
from dojo.graph import Graph, Op
from dojo.graph.analysis import root
from dojo.graph.memo import per_graph

EXPERT_TAG = ".experts."  # the routed experts' parameter names (dojo.models.moe)


@per_graph()
def with_whole_experts(graph: Graph) -> Graph:
    """`graph` with its routed experts' weights (parameters `*.experts.*`) declared replicated
    too: under expert tensor parallelism 1 (`etp=1`) Megatron-Core folds tp into the expert
    ranks and each GPU runs whole experts on the tokens dispatched to it, so the tp dataflow
    neither splits them nor reduces their outputs over tp (the dispatch moves the tokens;
    `compiler.experts`). Their per-rank share stays `compiler.experts`' (`held_params` skips
    them). Memoized per graph (`dojo.graph.memo`): one graph asks once, and gets one object
    back, which the compiler's own per-graph memos then recognise."""
    names = [t.name for t in graph.tensors if t.role == "parameter" and t.view_of is None
             and EXPERT_TAG in f".{t.name}"]
    if not names:
        return graph
    meta = dict(graph.meta)
    meta[META_KEY] = ",".join(n for n in (meta.get(META_KEY, ""), *names) if n)
    return replace(graph, meta=tuple(meta.items()))


def replicated_weights(graph: Graph) -> frozenset[int]:
    """Root ids of the parameters the model declared replicated over tp (none by default), not
    their updated copies (the optimizer's outputs)."""
    names = set(dict(graph.meta).get(META_KEY, "").split(",")) - {""}
    made = {t for op in graph.ops for t in op.outputs}
    return frozenset(t.id for t in graph.tensors if t.role == "parameter" and t.name in names
                     and t.view_of is None and t.id not in made)


def reads(graph: Graph, op: Op, keep: frozenset[int]) -> bool:
    """Whether `op` reads a replicated weight (a replicated linear's forward or input gradient;
    its weight gradient reads no weight)."""
    return bool(keep) and any(root(graph, t).id in keep for t in op.inputs)


def partial_bytes(graph: Graph, op: Op, acts: list[int], split: set[int],
                  made_by: dict[int, Op], keep: frozenset[int]) -> float:
    """Captured bytes all-reduced before a replicated linear's input gradient when its output
    gradient comes from the split region: of a concatenation (MLA's latent and rotary key), the
    split parts only (the latent's gradient is already whole, reduced at the up projection).
    0 for other ops."""
    if not reads(graph, op, keep) or not acts or acts[0] not in split:
        return 0.0
    made = made_by.get(acts[0])
    if made is not None and "cat" in made.target:
        return float(sum(graph.tensors[r].bytes for r in
                         (root(graph, t).id for t in made.inputs) if r in split))
    return float(graph.tensors[acts[0]].bytes)


def held_params(sizes: dict[str, list[int]], graph: Graph, keep: frozenset[int],
                block: str | None, labels: list[str], tp: int) -> dict[str, int]:
    """Per section, its parameters (`sizes`: element counts per tensor) counted so that params /
    tp is one rank's share: a replicated weight is held whole on each of the tp ranks, i.e. (tp -
    1) x its size more than the 1/tp of a split one."""
    first: dict[int, str] = {}
    for op, label in zip(graph.ops, labels):
        for t in op.inputs:
            first.setdefault(root(graph, t).id, label)
    out: dict[str, int] = {}
    for r in keep:
        info = graph.tensors[r]
        if EXPERT_TAG in f".{info.name}":
            continue  # routed experts: their share per rank is compiler.experts'
        label = "block" if block is not None and info.block == block else first.get(r, "pre")
        label = "pre" if label == "block" and info.block != block else label
        out[label] = out.get(label, 0) + math.prod(info.shape) * (tp - 1)
    return {label: sum(v) + out.get(label, 0) for label, v in sizes.items()}


def sp_pairs(phase: str, kept: bool, nbytes: float
             ) -> tuple[tuple[str, list[tuple[str, float]]], ...]:
    """Under sp, (phase, collectives) of one partial sum of `nbytes` found in `phase`: a
    forward one is g (reduce-scatter; backward all-gathers its gradient); a backward one is f's
    conjugate (forward all-gathers the input; backward reduce-scatters the gradient and, for a
    linear's input, not a `kept` rotary key, all-gathers the saved shard for the weight
    gradient)."""
    if phase == "forward":
        return (("forward", [("reduce_scatter", nbytes)]), ("backward", [("all_gather", nbytes)]))
    wgrad = [] if kept else [("all_gather", nbytes)]
    return (("forward", [("all_gather", nbytes)]),
            ("backward", [("reduce_scatter", nbytes), *wgrad]))
