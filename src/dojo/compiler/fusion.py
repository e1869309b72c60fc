"""Kernel fusion: consecutive vector ops between two matrix ops run as one kernel.

This is the pass that fused kernels (Megatron-LM's bias-GELU, bias-dropout-add, scale-mask-
softmax) and torch.compile's Inductor perform: a chain of elementwise, normalisation and
reduction ops reads what it needs from memory once and writes only what something outside the
chain consumes; intermediates that live only inside the chain stay in registers.

`fuse_attention` is the other fusion a device makes whatever the capture did: SDPA calls that a
CPU capture lowered to their unfused math fallback run as FlashAttention's fused kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from dojo.graph import Graph, Op, TensorInfo
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


def loss_groups(grouped: list[tuple[list[Op], str]]) -> set[int]:
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


# Attention as the device runs it. `F.scaled_dot_product_attention` with dropout has no fused
# CPU kernel, so a CPU capture records PyTorch's math fallback: QK^T -> + causal mask ->
# `_safe_softmax` -> dropout -> @V, with every (S, S) intermediate kept for backward. A GPU runs
# the same call as one FlashAttention kernel, dropout included: it keeps q, k, v, the output, the
# row logsumexp (FP32) and the Philox seed and offset, regenerates the dropout mask and the scores
# in backward, and writes its output and gradients token-major (b, s, heads, d), so the model's
# transpose-and-reshape around the call copies nothing. Only SDPA's fallback emits
# `_safe_softmax` (a hand-written attention calls `_softmax`): that op marks the calls to fuse.
SDPA_FALLBACK = "aten._safe_softmax.default"
FLASH_FORWARD = "aten._scaled_dot_product_flash_attention.default"
FLASH_BACKWARD = "aten._scaled_dot_product_flash_attention_backward.default"
_COPIES = ("aten.clone.default", "aten._unsafe_view.default")
_AROUND_MATMULS = (*_COPIES, "aten.mul.Scalar")  # copies and the sqrt(scale) multiply


class _NoMatch(Exception):
    """The ops around a `_safe_softmax` are not SDPA's fallback as expected: leave them."""


@dataclass
class _Site:
    """One SDPA call's fallback: its forward and backward ops and the fused ops' tensors."""

    fwd: set[int]
    bwd: set[int]
    qkv: tuple[int, int, int]
    out: int
    grad_out: int
    grads: tuple[int, ...]
    flops: tuple[int, int]  # fused forward, fused backward (FLOP)
    causal: bool = False    # a constant mask added to the scores (SDPA's is_causal)


class _Flow:
    """Producers and readers of each tensor id (views are tensors too), weights excluded."""

    def __init__(self, graph: Graph, weights: set[int]) -> None:
        self.graph = graph
        self.made_by = {t: op for op in graph.ops for t in op.outputs}
        self.readers: dict[int, list[Op]] = {}
        for op in graph.ops:
            for t in op.inputs:
                self.readers.setdefault(t, []).append(op)
        self.weights = weights

    def acts(self, op: Op) -> list[int]:
        """`op`'s activation inputs: not made from weights and constants alone."""
        return [t for t in op.inputs if root(self.graph, t).id not in self.weights]

    def walk_back(self, t: int, phase: str) -> tuple[int, list[Op]]:
        """From tensor `t` back through the views and copies SDPA's fallback adds around its
        matmuls (expand, clone, _unsafe_view, the sqrt(scale) multiply): (the tensor the
        earliest copy read, the ops from there to `t`)."""
        path: list[Op] = []
        cut, start = -1, t
        while (op := self.made_by.get(t)) is not None and op.phase == phase:
            acts = self.acts(op)
            if len(acts) != 1 or not (op.rule in FREE_RULES or op.target in _AROUND_MATMULS):
                break
            if phase == "forward" and op.target == "aten.clone.default" and not self._expanded(op):
                break  # the model's own copy (MLA's value.contiguous()), not the fallback's
            path.append(op)
            if op.rule not in FREE_RULES:
                cut, start = len(path) - 1, acts[0]
            t = acts[0]
        return start, path[:cut + 1]

    def _expanded(self, op: Op) -> bool:
        """Whether `op` copies an expanded tensor: the fallback's reshape of its batched
        operand (expand -> clone -> _unsafe_view) does; a copy the model makes does not."""
        maker = self.made_by.get(op.inputs[0]) if op.inputs else None
        return maker is not None and maker.target == "aten.expand.default"

    def made_in(self, ops: set[int]) -> set[int]:
        """Ids of the tensors the ops `ops` (ids) produce."""
        return {t for op in self.graph.ops if op.id in ops for t in op.outputs}


def _forward_site(flow: _Flow, anchor: Op) -> tuple[set[int], tuple[int, int, int], int,
                                                     tuple[Op, Op]]:
    """(op ids, (q, k, v), output, (scores matmul, values matmul)) of the forward of the
    SDPA call whose softmax is `anchor`."""
    region = {anchor.id}
    t = anchor.inputs[0]
    while (op := flow.made_by.get(t)) is not None and op.rule not in MATRIX_RULES:
        acts = flow.acts(op)
        if len(acts) != 1:
            raise _NoMatch
        region.add(op.id)
        t = acts[0]
    scores = flow.made_by.get(t)
    if scores is None or len(flow.acts(scores)) != 2:
        raise _NoMatch
    region.add(scores.id)
    qk = []
    for t in flow.acts(scores):
        start, path = flow.walk_back(t, "forward")
        qk.append(start)
        region |= {op.id for op in path}
    values = None
    made = flow.made_in(region)
    for op in flow.graph.ops[flow.graph.ops.index(anchor) + 1:]:
        if op.phase != "forward" or values is not None:
            break
        if not any(t in made for t in op.inputs):
            continue
        inside = all(t in made for t in flow.acts(op))
        if op.rule in MATRIX_RULES and len(flow.acts(op)) == 2 and not inside:
            values = op
        elif not inside:
            raise _NoMatch
        region.add(op.id)
        made |= set(op.outputs)
    if values is None:
        raise _NoMatch
    v, path = flow.walk_back(next(t for t in flow.acts(values) if t not in made), "forward")
    region |= {op.id for op in path}
    out = values.outputs[0]
    tail = [op for op in flow.readers.get(out, []) if op.target == "aten._unsafe_view.default"]
    if len(tail) == 1:
        region.add(tail[0].id)
        out = tail[0].outputs[0]
    return region, (qk[0], qk[1], v), out, (scores, values)


def _backward_site(flow: _Flow, fwd: set[int]) -> tuple[set[int], int, tuple[int, ...]]:
    """(op ids, output gradient, input gradients) of the backward of a forward site `fwd`:
    the ops that read what it saved, the copies of the output gradient before them, and the
    views, copies and scale multiplies after them up to the gradients of q, k and v."""
    graph = flow.graph
    saved = {root(graph, t).id for t in flow.made_in(fwd)}
    ops = [op for op in graph.ops if op.phase == "backward"]
    region = {op.id for op in ops if any(root(graph, t).id in saved for t in op.inputs)}
    starts = _grad_out(flow, region, saved)
    if len(starts) != 1:
        raise _NoMatch
    made = {root(graph, t).id for t in flow.made_in(region)}
    matmuls = {t for op in ops if op.id in region and op.rule in MATRIX_RULES
               for t in op.outputs}
    for op in ops:
        acts = [root(graph, t).id for t in flow.acts(op)]
        if op.id in region or len(acts) != 1 or acts[0] not in made:
            continue
        scale = op.target == "aten.mul.Scalar" and acts[0] in matmuls
        if op.rule in FREE_RULES or op.target in _COPIES or scale:
            region.add(op.id)
            made |= {root(graph, t).id for t in op.outputs}
    grads = tuple(t for op in ops if op.id not in region for t in op.inputs
                  if root(graph, t).id in made)
    if not grads:
        raise _NoMatch
    return region, starts.pop(), tuple(dict.fromkeys(grads))


def _grad_out(flow: _Flow, region: set[int], saved: set[int]) -> set[int]:
    """Add to `region` the backward ops that feed it from outside: the matmuls of two
    activations (the gradient of the scores, dO V^T, reads v itself, not a saved copy) and the
    copies of the output gradient; return where those copies start (the output gradient)."""
    graph = flow.graph
    starts: set[int] = set()
    pending = [t for op in graph.ops if op.id in region for t in flow.acts(op)]
    while pending:
        t = pending.pop()
        base = flow.made_by.get(root(graph, t).id)
        made = {root(graph, m).id for m in flow.made_in(region)}
        if base is None or base.phase != "backward" or root(graph, t).id in made | saved:
            continue
        maker = flow.made_by.get(t)
        views = []
        while maker is not None and maker.rule in FREE_RULES and len(maker.inputs) == 1:
            views.append(maker)
            maker = flow.made_by.get(maker.inputs[0])
        if (maker is not None and maker.phase == "backward" and maker.rule in MATRIX_RULES
                and len(flow.acts(maker)) == 2):
            region |= {op.id for op in (*views, maker)}
            pending += flow.acts(maker)
            continue
        start, path = flow.walk_back(t, "backward")
        starts.add(start)
        region |= {p.id for p in path}
    return starts


def _site(flow: _Flow, anchor: Op) -> _Site:
    fwd, qkv, out, (scores, values) = _forward_site(flow, anchor)
    made = flow.made_in(fwd)
    for t in made - {out}:
        if any(op.id not in fwd and op.phase == "forward" for op in flow.readers.get(t, [])):
            raise _NoMatch
    bwd, grad_out, grads = _backward_site(flow, fwd)
    matmuls = sum(op.flops for op in flow.graph.ops
                  if op.id in bwd and op.rule in MATRIX_RULES)
    # FlashAttention's backward recomputes the scores (QK^T) before its four matmuls.
    site = _Site(fwd, bwd, qkv, out, grad_out, grads,
                 (scores.flops + values.flops, matmuls + scores.flops), _masked(flow, anchor))
    _backward_slot(site, flow.graph)  # raises _NoMatch where no slot fits
    return site


def _masked(flow: _Flow, anchor: Op) -> bool:
    """Whether an op between the scores and the softmax `anchor` reads a tensor made from
    constants alone: the mask SDPA's fallback builds for is_causal (ones().tril(), made
    additive) and adds to the scores. A kernel skips the masked tiles (`flash_target`)."""
    t = anchor.inputs[0]
    while (op := flow.made_by.get(t)) is not None and op.rule not in MATRIX_RULES:
        acts = flow.acts(op)
        if len(op.inputs) > len(acts):
            return True
        t = acts[0]
    return False


def flash_target(backward: bool, causal: bool) -> str:
    """The fused op's target: FlashAttention's forward or backward ATen op, marked
    `[causal]` when the call masks the scores causally (it then executes about half of the
    counted full-s^2 FLOPs: `dojo.sim.attention.executed_share`)."""
    return (FLASH_BACKWARD if backward else FLASH_FORWARD) + ("[causal]" if causal else "")


def has_sdpa_fallback(graph: Graph) -> bool:
    """Whether the capture lowered some SDPA call to its math fallback (see above)."""
    return any(op.target == SDPA_FALLBACK for op in graph.ops)


def fuse_attention(graph: Graph, weights: set[int]) -> Graph:
    """`graph` with each SDPA call that the capture lowered to its math fallback run as the
    fused FlashAttention kernels (see above; `weights`: root ids of the tensors made from
    weights and constants alone). FLOPs stay the matmuls' (forward 4 b h s^2 d, counted at
    full s^2 like the unfused chain; backward 10 b h s^2 d with the recomputed scores); bytes
    are the fused kernels' inputs and outputs. Calls that do not match are left as captured."""
    flow = _Flow(graph, weights)
    sites = []
    for op in graph.ops:
        if op.target == SDPA_FALLBACK and op.phase == "forward":
            try:
                sites.append(_site(flow, op))
            except _NoMatch:
                continue
    if not sites:
        return graph
    tensors = list(graph.tensors)
    fused: dict[int, Op] = {}
    for site in sites:
        fused.update(_fused_ops(site, graph, tensors))
    removed = set().union(*(s.fwd | s.bwd for s in sites))
    removed |= _dead(flow, removed, {t for op in fused.values() for t in op.inputs})
    ops = [fused.get(op.id, op) for op in graph.ops if op.id in fused or op.id not in removed]
    ops = _token_major(ops, tensors, {s.out for s in sites})
    return replace(graph, tensors=tuple(tensors), ops=tuple(ops))


def _fused_ops(site: _Site, graph: Graph, tensors: list[TensorInfo]) -> dict[int, Op]:
    """The fused forward and backward ops of `site`, keyed by the id of the op each replaces
    (the last of its region, so every input is made before it); appends the logsumexp and
    the RNG state to `tensors` and makes the gradients tensors of their own."""
    o = graph.tensors[site.out]
    block = o.block
    lse = TensorInfo(len(tensors), o.shape[:-1], "float32", "activation",
                     4 * math.prod(o.shape[:-1]), block=block)
    rng = TensorInfo(len(tensors) + 1, (2,), "int64", "activation", 16, block=block)
    tensors += [lse, rng]
    for t in (site.out, *site.grads):
        tensors[t] = replace(tensors[t], view_of=None)
    size = {t.id: t.bytes for t in tensors}
    fwd_in, fwd_out = site.qkv, (site.out, lse.id, rng.id)
    bwd_in = (site.grad_out, *site.qkv, *fwd_out)
    last_f, last_b = max(site.fwd), _backward_slot(site, graph)
    layer = next(op.layer for op in graph.ops if op.id == last_f)
    return {
        last_f: Op(last_f, flash_target(False, site.causal), "forward", fwd_in, fwd_out,
                   site.flops[0],
                   sum(size[t] for t in fwd_in), sum(size[t] for t in fwd_out), "flop_counter",
                   block, layer),
        last_b: Op(last_b, flash_target(True, site.causal), "backward", bwd_in, site.grads,
                   site.flops[1],
                   sum(size[t] for t in bwd_in), sum(size[t] for t in site.grads),
                   "flop_counter", block),
    }


def _backward_slot(site: _Site, graph: Graph) -> int:
    """The id of the backward op the fused backward replaces: the region's last, unless an op
    outside it reads a gradient earlier (autograd may run MLA's rotary-key gradient, summed
    over the heads, before the query's last scale multiply): then the last region op before
    that reader, which must come after the output gradient is made."""
    grads = set(site.grads)
    readers = [op.id for op in graph.ops if op.phase == "backward" and op.id not in site.bwd
               and grads.intersection(op.inputs)]
    first = min(readers, default=max(site.bwd) + 1)
    slot = max((i for i in site.bwd if i < first), default=-1)
    made = next((op.id for op in graph.ops if site.grad_out in op.outputs), -1)
    if slot <= made:
        raise _NoMatch
    return slot


def _dead(flow: _Flow, removed: set[int], kept: set[int]) -> set[int]:
    """Ops whose every output was read only by `removed` ops (the causal mask's construction):
    nothing reads them once the fallback is gone. `kept`: tensors the fused ops read."""
    dead: set[int] = set()
    changed = True
    while changed:
        changed = False
        for op in flow.graph.ops:
            if (op.id in removed or op.id in dead or op.phase == "optimizer"
                    or kept.intersection(op.outputs)):
                continue
            readers = [r for t in op.outputs for r in flow.readers.get(t, [])]
            if readers and all(r.id in removed or r.id in dead for r in readers):
                dead.add(op.id)
                changed = True
    return dead


def _token_major(ops: list[Op], tensors: list[TensorInfo], outs: set[int]) -> list[Op]:
    """The fused kernel writes its output token-major, so the copies of its transpose to the
    (b, s, h) layout (clone, then _unsafe_view) become views of it."""
    made = {t: op for op in ops for t in op.outputs}
    new = []
    for op in ops:
        if op.target in _COPIES and len(op.outputs) == 1 and op.inputs:
            src = op.inputs[0]
            transposed = op.target != "aten.clone.default" or (
                src in made and made[src].target == "aten.transpose.int")
            if transposed and _root_id(tensors, src) in outs:
                tensors[op.outputs[0]] = replace(tensors[op.outputs[0]], view_of=src)
                op = replace(op, rule="view", flops=0, bytes_read=0, bytes_written=0)
        new.append(op)
    return new


def _root_id(tensors: list[TensorInfo], t: int) -> int:
    while (up := tensors[t].view_of) is not None:
        t = up
    return t
