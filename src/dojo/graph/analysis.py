"""Analyses of a `Graph`: totals per phase, state bytes, the eager schedule, peak activations.

Every total accounts for repeated blocks: a template op or tensor of a block counts `repeat`
times. `schedule` expands blocks into the full eager order, giving each template tensor one
instance per execution, so lifetimes (and so peak memory) are exact, not estimated.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from dojo.graph.ir import PHASES, Graph, Op, TensorInfo

# A tensor instance in the expanded schedule: (tensor id, block instance or None outside blocks).
Key = tuple[int, int | None]


@dataclass(frozen=True, slots=True)
class PhaseTotals:
    """Costs of one phase: `ops` executed, `flops` in FLOP, bytes read and written."""

    ops: int
    flops: int
    bytes_read: int
    bytes_written: int


@dataclass(frozen=True, slots=True)
class StateBytes:
    """Persistent training state in bytes, and the trainable parameter count (elements)."""

    params: int
    grads: int
    optimizer_state: int
    buffers: int
    param_count: int


def _repeats(graph: Graph) -> dict[str | None, int]:
    reps: dict[str | None, int] = {b.name: b.repeat for b in graph.blocks}
    reps[None] = 1
    return reps


def phase_totals(graph: Graph) -> dict[str, PhaseTotals]:
    """Totals per phase (keys of `PHASES`), each template op counted `repeat` times."""
    reps = _repeats(graph)
    acc = {p: [0, 0, 0, 0] for p in PHASES}
    for op in graph.ops:
        n = reps[op.block]
        a = acc[op.phase]
        a[0] += n
        a[1] += n * op.flops
        a[2] += n * op.bytes_read
        a[3] += n * op.bytes_written
    return {p: PhaseTotals(*a) for p, a in acc.items()}


def produced_ids(graph: Graph) -> set[int]:
    """Ids of tensors some op produces; the rest are the step's inputs (state, batch, constants)."""
    return {t for op in graph.ops for t in op.outputs}


def state_bytes(graph: Graph) -> StateBytes:
    """Bytes of parameters, gradients and optimizer state as the step receives them.

    Parameters and optimizer state are counted once (the step's inputs, not their updated
    copies); gradients are the storage-owning tensors with role "gradient".
    """
    reps = _repeats(graph)
    made = produced_ids(graph)
    sums = {"parameter": 0, "gradient": 0, "optimizer_state": 0, "buffer": 0, "count": 0}
    for t in graph.tensors:
        n = reps[t.block]
        if t.view_of is not None:
            continue
        if t.role in ("parameter", "optimizer_state", "buffer") and t.id not in made:
            sums[t.role] += n * t.bytes
            if t.role == "parameter":
                sums["count"] += n * math.prod(t.shape)
        elif t.role == "gradient":
            sums["gradient"] += n * t.bytes
    return StateBytes(sums["parameter"], sums["gradient"], sums["optimizer_state"],
                      sums["buffer"], sums["count"])


def root(graph: Graph, tid: int) -> TensorInfo:
    """The tensor that owns the storage of tensor `tid` (follows `view_of`)."""
    t = graph.tensors[tid]
    while t.view_of is not None:
        t = graph.tensors[t.view_of]
    return t


def schedule(graph: Graph) -> Iterator[tuple[Op, tuple[Key, ...], tuple[Key, ...]]]:
    """The eager order with blocks expanded: (op, input keys, output keys) per execution.

    Keys name storage roots (views resolve to the tensor they alias). A template tensor of block
    B is instance k in B's k-th instance; forward runs instances 0..N-1, backward N-1..0,
    optimizer 0..N-1. In instance k a template reference to a carry-in means instance k-1's
    carry-out (k+1's for a carry-out made in backward), or the outside tensor at the first such
    instance; a reference from outside B to B's tensor means B's last executed instance.
    """
    reps = _repeats(graph)
    roots = [root(graph, t.id).id for t in graph.tensors]
    producer_phase = {t: op.phase for op in graph.ops for t in op.outputs}
    carry = {roots[i]: roots[o] for b in graph.blocks for i, o in b.carry}
    last = {p: {b.name: (0 if p == "backward" else b.repeat - 1) for b in graph.blocks}
            for p in PHASES}

    def key(tid: int, block: str | None, k: int | None) -> Key:
        r = roots[tid]
        owner = graph.tensors[r].block
        if owner is None:
            if block is not None and k is not None and r in carry:
                out = carry[r]
                # forward carries come from instance k-1, backward ones from instance k+1
                src = k + 1 if producer_phase.get(out) == "backward" else k - 1
                if 0 <= src < reps[block]:
                    return (out, src)
            return (r, None)
        if owner == block:
            return (r, k)
        return (r, last[producer_phase.get(r, "forward")][owner])

    ops = graph.ops
    i = 0
    while i < len(ops):
        j = i
        while j < len(ops) and ops[j].block == ops[i].block and ops[j].phase == ops[i].phase:
            j += 1
        run = ops[i:j]
        blk = ops[i].block
        n = reps[blk]
        order: list[int | None] = [None] if blk is None else list(range(n))
        if blk is not None and ops[i].phase == "backward":
            order.reverse()
        for k in order:
            for op in run:
                yield (op, tuple(key(t, blk, k) for t in op.inputs),
                       tuple(key(t, blk, k) for t in op.outputs))
        i = j


def peak_activation_bytes(graph: Graph) -> int:
    """Peak live bytes of activations over forward and backward in eager order.

    Counts storage-owning tensors of role "activation" produced by forward or backward ops
    (activations, saved tensors, activation gradients, temporaries); a tensor is live from the
    op that produces it to its last use (through any view), inclusive. Parameters, gradients,
    optimizer state, inputs and the optimizer phase are excluded. Bytes.
    """
    birth: dict[Key, int] = {}
    death: dict[Key, int] = {}
    size: dict[Key, int] = {}
    step = -1
    for step, (_op, ins, outs) in enumerate(
        e for e in schedule(graph) if e[0].phase != "optimizer"
    ):
        for kk in outs:
            t = graph.tensors[kk[0]]
            if t.role == "activation" and kk not in birth:
                birth[kk] = step
                death[kk] = step
                size[kk] = t.bytes
        for kk in ins:
            if kk in birth:
                death[kk] = step
    if step < 0:
        return 0
    delta = [0] * (step + 2)
    for kk, b in birth.items():
        delta[b] += size[kk]
        delta[death[kk] + 1] -= size[kk]
    live = peak = 0
    for d in delta:
        live += d
        peak = max(peak, live)
    return peak


def top_ops(graph: Graph, n: int = 10) -> list[tuple[str, str, int, int]]:
    """The `n` costliest (target, phase) pairs by FLOP: (target, phase, executions, FLOP)."""
    reps = _repeats(graph)
    acc: dict[tuple[str, str], list[int]] = {}
    for op in graph.ops:
        a = acc.setdefault((op.target, op.phase), [0, 0])
        a[0] += reps[op.block]
        a[1] += reps[op.block] * op.flops
    rows = [(t, p, c, f) for (t, p), (c, f) in acc.items()]
    rows.sort(key=lambda r: (-r[3], r[0], r[1]))
    return rows[:n]


def rule_totals(graph: Graph) -> dict[str, tuple[int, int]]:
    """Per FLOP rule (see `Op.rule`): (executions, FLOP). Shows what no formula covered."""
    reps = _repeats(graph)
    acc: dict[str, list[int]] = {}
    for op in graph.ops:
        a = acc.setdefault(op.rule, [0, 0])
        a[0] += reps[op.block]
        a[1] += reps[op.block] * op.flops
    return {r: (a[0], a[1]) for r, a in sorted(acc.items())}
