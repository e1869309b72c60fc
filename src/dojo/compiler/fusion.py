"""Kernel fusion: consecutive vector ops between two matrix ops run as one kernel.

This is the pass that fused kernels (Megatron-LM's bias-GELU, bias-dropout-add, scale-mask-
softmax) and torch.compile's Inductor perform: a chain of elementwise, normalisation and
reduction ops reads what it needs from memory once and writes only what something outside the
chain consumes; intermediates that live only inside the chain stay in registers.
"""

from __future__ import annotations

from dojo.graph import Graph, Op
from dojo.graph.analysis import root

MATRIX_RULES = ("flop_counter",)
FREE_RULES = ("view",)


def consumers(graph: Graph) -> dict[int, set[int]]:
    """Storage root id -> ids of the (non-view) ops that read it."""
    out: dict[int, set[int]] = {}
    for op in graph.ops:
        if op.rule in FREE_RULES:
            continue
        for t in op.inputs:
            out.setdefault(root(graph, t).id, set()).add(op.id)
    return out


REDUCTION_RULES = ("norm_softmax", "reduction")


def groups(graph: Graph, labels: list[str], fuse: str = "full") -> list[tuple[list[Op], str]]:
    """Ops of the forward and backward phases in kernel groups, each with its section label.

    A matrix op is a group of its own. Vector ops of one phase and section (views skipped):
    `full` fuses each maximal run; `kernels` ends a group after each softmax, norm or reduction
    (a hand-written kernel fuses its pointwise prologue with one reduction); `none` gives every
    op its own kernel.
    """
    out: list[tuple[list[Op], str]] = []
    run: list[Op] = []
    key: tuple[str, str] | None = None
    for op, label in zip(graph.ops, labels):
        if op.rule in FREE_RULES or op.phase == "optimizer":
            continue
        ended = fuse == "kernels" and bool(run) and run[-1].rule in REDUCTION_RULES
        if fuse == "none" or ended or op.rule in MATRIX_RULES or (op.phase, label) != key:
            if run and key is not None:
                out.append((run, key[1]))
            run, key = [], None
            if op.rule in MATRIX_RULES:
                out.append(([op], label))
                continue
            key = (op.phase, label)
        run.append(op)
    if run and key is not None:
        out.append((run, key[1]))
    return out


def moved_tensors(graph: Graph, group: list[Op], readers: dict[int, set[int]]) -> set[int]:
    """Root ids of the tensors a kernel moves: inputs from outside it, and outputs read outside
    it (or by nothing in the graph, i.e. the step's outputs and the carry into the next block);
    a single op writes all its outputs."""
    ids = {op.id for op in group}
    made = {root(graph, t).id for op in group for t in op.outputs}
    reads = {root(graph, t).id for op in group for t in op.inputs} - made
    if len(group) == 1:
        return reads | made
    return reads | {r for r in made if not readers.get(r) or readers[r] - ids}


def fused_bytes(graph: Graph, group: list[Op], readers: dict[int, set[int]]) -> int:
    """Bytes a kernel moves (`moved_tensors`); a single op as the capture counted it."""
    if len(group) == 1:
        return group[0].bytes_read + group[0].bytes_written
    return sum(graph.tensors[r].bytes for r in moved_tensors(graph, group, readers))
