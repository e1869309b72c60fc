"""What a fused pointwise kernel keeps for its backward: its inputs, not its intermediates.

A fused elementwise kernel with its own backward (Megatron-Core's bias-SwiGLU,
`megatron/core/fusions/fused_bias_swiglu.py`: `SwiGLUFunction` saves only its input, the
first linear's output, and `swiglu_back` recomputes SiLU from it; Inductor's partitioner does
the same for pointwise chains) keeps the kernel's inputs and recomputes inside its backward
what eager autograd would have saved between its ops. Eager PyTorch runs `F.silu(gate) * up`
as two ops and keeps SiLU's output for the product's backward beside `gate` (for SiLU's
backward) and `up`: one F-wide tensor per token more.

From the captured graph and the plan's kernels (`fusion.groups`): a tensor the backward reads
is recomputed, not kept, when
- it is made inside a fused vector kernel (two or more ops) and read in the forward only by
  that kernel (an intermediate: the SwiGLU product, which the next linear reads, stays kept,
  as that linear saves its input);
- every op from the kernel's inputs to it is elementwise (`pointwise`: a norm's statistics,
  made through a reduction, stay kept) and draws no random numbers (dropout masks stay),
  in floating point, and written once (an in-place op's input value is gone);
- every tensor it derives from outside that elementwise chain is kept anyway (read by the
  backward) or made from weights alone: a kernel input, or a tensor the kernel itself makes
  and keeps (a fused RMSNorm's 1/rms, made through its reduction: `x * rsqrt(mean(x^2) + eps)`
  is rebuilt from the kept `x` and 1/rms, as apex's `FusedRMSNormAffineFunction` saves only
  input, weight and 1/rms, and TransformerEngine's RMSNorm input and rsigma). Recomputing
  then costs no memory, so the kernel never trades one saved tensor for another.
With `fusion=none` (eager PyTorch, one kernel per op) nothing is recomputed.
"""

from __future__ import annotations

from dojo.compiler.fusion import FREE_RULES
from dojo.graph import Graph, Op
from dojo.graph.analysis import root

# Ops that draw random numbers: their outputs (a dropout mask) are kept, never recomputed.
_RANDOM = ("dropout", "bernoulli", "rand")


def recomputed(graph: Graph, grouped: list[tuple[list[Op], str]], weights: set[int]
               ) -> frozenset[int]:
    """Root ids of the tensors fused pointwise kernels recompute in their backward instead of
    keeping (see the module docstring); `grouped`: the step's kernels (`fusion.groups`),
    `weights`: root ids made from weights and constants alone (`tpflow.weight_derived`)."""
    saved = _read_by_backward(graph)
    written = _in_place(graph)
    readers: dict[int, set[int]] = {}
    for op in graph.ops:
        if op.phase == "forward" and op.rule not in FREE_RULES:
            for t in op.inputs:
                readers.setdefault(root(graph, t).id, set()).add(op.id)
    out: set[int] = set()
    for group, _ in grouped:
        if len(group) < 2 or group[0].phase != "forward":
            continue
        ids = {op.id for op in group}
        made: dict[int, Op] = {}
        for op in group:
            for t in op.outputs:
                made.setdefault(root(graph, t).id, op)
        for rid, op in made.items():
            if (rid in saved and rid not in written and readers.get(rid, set()) <= ids
                    and graph.tensors[rid].dtype.startswith("float")
                    and _from_kept(graph, op, made, saved | weights, written)):
                out.add(rid)
    return frozenset(out)


def _read_by_backward(graph: Graph) -> set[int]:
    """Root ids of the tensors some backward op reads."""
    return {root(graph, t).id for op in graph.ops if op.phase == "backward"
            for t in op.inputs}


def _in_place(graph: Graph) -> set[int]:
    """Root ids that a forward op both reads and writes (in place: `div_`, `add_`)."""
    out: set[int] = set()
    for op in graph.ops:
        if op.phase == "forward" and op.rule not in FREE_RULES:
            ins = {root(graph, t).id for t in op.inputs}
            out |= ins & {root(graph, t).id for t in op.outputs}
    return out


def _from_kept(graph: Graph, op: Op, made: dict[int, Op], kept: set[int],
               written: set[int]) -> bool:
    """Whether `op`'s output can be rebuilt by elementwise ops inside its kernel from tensors
    that stay available (`kept`: saved for the backward, or made from weights alone) and
    written once (not in `written`: an in-place op's first value is gone)."""
    stack, seen = [op], set()
    while stack:
        cur = stack.pop()
        if cur.id in seen:
            continue
        seen.add(cur.id)
        if cur.rule != "pointwise" or any(r in cur.target for r in _RANDOM):
            return False
        for t in cur.inputs:
            rid = root(graph, t).id
            if rid in written:
                return False  # in place (dropout's scale `div_`): the first value is gone
            if rid in kept:
                continue  # available: kept anyway, even when made inside the kernel (a norm's
                # 1/rms, made through a reduction), or rebuilt itself from kept tensors
            if rid not in made:
                return False
            stack.append(made[rid])
    return True
