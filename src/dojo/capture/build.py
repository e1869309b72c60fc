"""Turn a traced fx step into the IR's raw form: tensors with roles, ops with phases and costs.

`RawGraph` is the mutable working form that `dojo.capture.blocks` rewrites before `freeze`
makes the immutable `dojo.graph.Graph`. Phases come from the trace markers (node counts at the
loss and at the end of backward); `operator.getitem` nodes are folded into the multi-output op
they index, so every IR op is a real ATen op.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.fx import GraphModule, Node
from torch.utils._pytree import tree_flatten, tree_map

from dojo.capture import costs
from dojo.capture.trace import Mark, Signature
from dojo.graph import Block, Graph, Op, TensorInfo


@dataclass
class RawTensor:
    shape: tuple[int, ...]
    dtype: str
    role: str
    bytes: int
    view_of: int | None = None
    name: str = ""
    block: str | None = None


@dataclass
class RawOp:
    node: int  # index of the fx node, comparable with marker counts
    target: str
    phase: str
    inputs: list[int]
    outputs: list[int]
    flops: int
    bytes_read: int
    bytes_written: int
    rule: str
    layer: str | None = None
    block: str | None = None


@dataclass
class RawGraph:
    tensors: list[RawTensor] = field(default_factory=list)
    ops: list[RawOp] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)  # tid per traced-step input
    outputs: list[int] = field(default_factory=list)  # tid per traced-step output
    blocks: list[Block] = field(default_factory=list)

    def add(self, t: torch.Tensor, role: str, view_of: int | None = None, name: str = "") -> int:
        self.tensors.append(RawTensor(costs.shape_of(t), costs.dtype_name(t), role,
                                      costs.nbytes(t), view_of, name))
        return len(self.tensors) - 1

    def root(self, tid: int) -> int:
        while (v := self.tensors[tid].view_of) is not None:
            tid = v
        return tid


def _input_roles(sig: Signature) -> list[tuple[str, str]]:
    roles = [("parameter", n) for n in sig.params] + [("buffer", n) for n in sig.buffers]
    for name, upd in zip(sig.params, sig.updates):
        if upd is not None:
            roles += [("optimizer_state", f"{name}.{s}") for s in upd.state_names]
    roles += [("input", f"input{i}") for i in range(sig.n_inputs)]
    return roles + [("input", f"target{i}") for i in range(sig.n_targets)]


def _phase_bounds(marks: list[Mark]) -> tuple[int, int]:
    got = {kind: count for kind, _, _, count in marks if kind in ("loss", "grad")}
    return got["loss"], got["grad"]


def _layers(marks: list[Mark], n_nodes: int) -> list[str | None]:
    """Innermost module path active when each fx node was created (forward only)."""
    events = [(count, kind, label) for kind, label, _, count in marks if kind in ("enter", "exit")]
    out: list[str | None] = []
    stack: list[str] = []
    j = 0
    for i in range(n_nodes):
        while j < len(events) and events[j][0] <= i:
            _, kind, label = events[j]
            if kind == "enter":
                stack.append(label)
            elif stack:
                stack.pop()
            j += 1
        out.append(stack[-1] if stack else None)
    return out


def _alias_arg(op: Any, node: Node) -> Any:
    """The argument an in-place/out op writes (and its output aliases), else None."""
    for i, a in enumerate(op._schema.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            return node.args[i] if i < len(node.args) else node.kwargs.get(a.name)
    return None


def from_fx(gm: GraphModule, sig: Signature, marks: list[Mark]) -> RawGraph:
    """The raw IR of traced step `gm` (see module docstring)."""
    raw = RawGraph()
    nodes = list(gm.graph.nodes)
    loss_at, grad_at = _phase_bounds(marks)
    layers = _layers(marks, len(nodes))
    roles = iter(_input_roles(sig))
    tids: dict[Node, Any] = {}
    for i, node in enumerate(nodes):
        if node.op == "placeholder":
            role, name = next(roles)
            tids[node] = raw.add(node.meta["val"], role, name=name)
            raw.inputs.append(tids[node])
        elif node.op == "get_attr":
            tids[node] = raw.add(getattr(gm, str(node.target)), "buffer", name=str(node.target))
        elif node.op == "call_function" and node.target is operator.getitem:
            tids[node] = tids[node.args[0]][node.args[1]]
        elif node.op == "call_function":
            phase = "forward" if i < loss_at else "backward" if i < grad_at else "optimizer"
            layer = layers[i] if phase == "forward" else None
            tids[node] = _add_op(raw, node, i, phase, layer, tids)
        elif node.op == "output":
            flat, _ = tree_flatten(node.args[0])
            raw.outputs = [tids[n] for n in flat if isinstance(n, Node)]
    _output_roles(raw, sig)
    return raw


def _add_op(raw: RawGraph, node: Node, index: int, phase: str, layer: str | None,
            tids: dict[Node, Any]) -> Any:
    op = node.target
    val = node.meta.get("val")
    in_nodes = [a for a in tree_flatten((node.args, node.kwargs))[0] if isinstance(a, Node)]
    inputs: list[int] = []
    for n in in_nodes:
        got = tids.get(n)
        for t in got if isinstance(got, list) else [got]:
            if isinstance(t, int) and t not in inputs:
                inputs.append(t)
    view = costs.is_view(op)
    written = _alias_arg(op, node)
    alias: int | None = None
    if view and inputs:
        alias = raw.root(inputs[0])
    elif isinstance(written, Node) and isinstance(tids.get(written), int):
        alias = raw.root(tids[written])
    out_vals = list(val) if isinstance(val, list | tuple) else [val]
    outs: list[Any] = [raw.add(v, "activation", alias) if isinstance(v, torch.Tensor) else None
                       for v in out_vals]
    out_tids = [t for t in outs if t is not None]
    t_in = [raw.tensors[t] for t in inputs]
    t_out = [raw.tensors[t] for t in out_tids]
    args, kwargs = tree_map(lambda a: a.meta["val"] if isinstance(a, Node) else a,
                            (node.args, node.kwargs))
    in_vals = [v for v in tree_flatten((args, kwargs))[0] if isinstance(v, torch.Tensor)]
    out_tensors = [v for v in out_vals if isinstance(v, torch.Tensor)]
    flops, rule = costs.flops_of(op, args, kwargs, val, in_vals, out_tensors)
    read = 0 if view else sum(t.bytes for t in t_in)
    wrote = 0 if view else sum(t.bytes for t in t_out)
    target = str(op) + costs.causal_mark(op, args, kwargs) + costs.variant_mark(op, kwargs)
    raw.ops.append(RawOp(index, target, phase, inputs, out_tids, flops, read, wrote, rule, layer))
    return outs if isinstance(val, list | tuple) else outs[0]


def _output_roles(raw: RawGraph, sig: Signature) -> None:
    """Name the step's outputs: gradients, updated parameters and updated optimizer state."""
    trained = [n for n, g in zip(sig.params, sig.has_grad) if g]
    updated = [(n, u) for n, u, g in zip(sig.params, sig.updates, sig.has_grad) if g and u]
    named: list[tuple[str, str]] = [("activation", "loss")]
    named += [("gradient", f"{n}.grad") for n in trained]
    named += [("parameter", n) for n, _ in updated]
    named += [("optimizer_state", f"{n}.{s}") for n, u in updated for s in u.state_names]
    for tid, (role, name) in zip(raw.outputs, named):
        for t in {tid, raw.root(tid)}:
            if raw.tensors[t].role == "activation":
                raw.tensors[t].role = role
                raw.tensors[t].name = name
    for info in raw.tensors:  # a view has the role of the storage it aliases
        if info.view_of is not None:
            info.role = raw.tensors[info.view_of].role


def freeze(raw: RawGraph, name: str, meta: dict[str, str]) -> Graph:
    """The immutable `Graph` of `raw`, tensor ids renumbered densely in creation order."""
    used = sorted({t for op in raw.ops for t in op.inputs + op.outputs} | set(raw.inputs)
                  | {raw.root(t) for op in raw.ops for t in op.inputs + op.outputs})
    new = {old: i for i, old in enumerate(used)}
    tensors = tuple(
        TensorInfo(new[old], t.shape, t.dtype, t.role, t.bytes,
                   None if t.view_of is None else new[t.view_of], t.name, t.block)
        for old, t in ((o, raw.tensors[o]) for o in used)
    )
    ops = tuple(
        Op(i, o.target, o.phase, tuple(new[t] for t in o.inputs), tuple(new[t] for t in o.outputs),
           o.flops, o.bytes_read, o.bytes_written, o.rule, o.block, o.layer)
        for i, o in enumerate(raw.ops)
    )
    blocks = tuple(Block(b.name, b.repeat, tuple((new[a], new[c]) for a, c in b.carry),
                         b.param_bytes, b.params) for b in raw.blocks)
    return Graph(name, tensors, ops, blocks, tuple(sorted(meta.items())))
