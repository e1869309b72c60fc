"""Repeated identical blocks: find them, trace them at depth 2, keep one instance as a template.

A *stack* is a ModuleList or Sequential of >= `MIN_REPEAT` children with identical structure
(types, parameter and buffer names, shapes and dtypes); a stack of exactly 2 counts only where
it neither holds nor sits inside a longer stack (so a 2-layer transformer folds into a block a
pipeline can split, while a pair of identical stages keeps its inner stacks of >= 3). Capture
traces the model with each stack cut to its first two children, then `compress` checks that
instance 1's forward, backward and optimizer ops match instance 0's one for one (target and
shapes), keeps instance 0 as the template with the stack's real depth as its repeat count, and
records the carry (tensors one instance hands the next). Instance 1 is what proves the carry:
whatever it reads from instance 0 is the residual stream, whatever instance 0's backward reads
from instance 1's is its gradient.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

from torch import nn

from dojo.capture.build import RawGraph, RawOp
from dojo.capture.trace import Mark
from dojo.graph import Block

MIN_REPEAT = 2


def _structure(m: nn.Module) -> tuple[Any, ...]:
    mods = tuple((n, type(s).__name__) for n, s in m.named_modules())
    params = tuple((n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in m.named_parameters())
    bufs = tuple((n, tuple(b.shape), b.dtype) for n, b in m.named_buffers())
    return mods, params, bufs


def _identical_stacks(model: nn.Module, depth: int) -> dict[str, int]:
    """Module path -> depth of each ModuleList/Sequential of >= `depth` identical children."""
    found: dict[str, int] = {}
    for path, mod in model.named_modules():
        if not path or not isinstance(mod, nn.ModuleList | nn.Sequential) or len(mod) < depth:
            continue
        first = _structure(mod[0])
        if all(_structure(m) == first for m in list(mod)[1:]):
            found[path] = len(mod)
    return found


def find_stacks(model: nn.Module) -> dict[str, int]:
    """Module path -> depth of each outermost stack of identical blocks in `model`: stacks of
    >= 3 first, then stacks of 2 that neither hold nor sit inside one of those."""
    def outermost(stacks: dict[str, int]) -> dict[str, int]:
        return {p: n for p, n in stacks.items()
                if not any(p.startswith(q + ".") for q in stacks)}

    found = outermost(_identical_stacks(model, 3))
    pairs = outermost(_identical_stacks(model, MIN_REPEAT))
    for path, depth in pairs.items():
        if depth < 3 and not any(path.startswith(q + ".") or q.startswith(path + ".")
                                 for q in found):
            found[path] = depth
    return found


@contextlib.contextmanager
def reduced(model: nn.Module, stacks: dict[str, int], depth: int = 2) -> Iterator[None]:
    """Temporarily cut each stack of `model` to its first `depth` children (same objects)."""
    saved = []
    for path in stacks:
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        mod = getattr(parent, attr)
        kept = list(mod)[:depth]
        short = nn.Sequential(*kept) if isinstance(mod, nn.Sequential) else nn.ModuleList(kept)
        saved.append((parent, attr, mod))
        setattr(parent, attr, short)
    try:
        yield
    finally:
        for parent, attr, mod in reversed(saved):
            setattr(parent, attr, mod)


def _ranges(marks: list[Mark], path: str) -> dict[str, list[tuple[int, int]]] | None:
    """Node-count ranges of instances 0 and 1 per phase, or None if the markers are incomplete."""
    got: dict[tuple[str, int], list[int]] = {}
    for kind, label, index, count in marks:
        if label == path and kind in ("fwd_start", "fwd_end", "bwd_start", "bwd_end"):
            got.setdefault((kind, index), []).append(count)
    out: dict[str, list[tuple[int, int]]] = {"forward": [], "backward": []}
    for k in (0, 1):
        for phase, a, b in (("forward", "fwd_start", "fwd_end"),
                            ("backward", "bwd_start", "bwd_end")):
            # one call per instance and both gradient hooks fired, else no template
            if len(got.get((a, k), [])) != 1 or len(got.get((b, k), [])) != 1:
                return None
            out[phase].append((got[(a, k)][0], got[(b, k)][0]))
    return out


def _param_ranges(marks: list[Mark], prefix: str) -> list[tuple[int, int]]:
    starts = {label: c for kind, label, _, c in marks if kind == "param_start"}
    return [(starts[label], c) for kind, label, _, c in marks
            if kind == "param_end" and label.startswith(prefix)]


def _select(ops: list[RawOp], phase: str, spans: list[tuple[int, int]]) -> list[int]:
    return [i for i, op in enumerate(ops)
            if op.phase == phase and any(a <= op.node < b for a, b in spans)]


def _sig(raw: RawGraph, op: RawOp) -> tuple[Any, ...]:
    shapes = tuple(raw.tensors[t].shape for t in op.inputs + op.outputs)
    return (op.target, len(op.inputs), len(op.outputs), shapes)


def compress(raw: RawGraph, marks: list[Mark], path: str, repeat: int) -> bool:
    """Rewrite `raw` (traced at depth 2) to hold stack `path` once, repeated `repeat` times.

    Returns False, leaving `raw` untouched, when instance 1 does not mirror instance 0.
    """
    spans = _ranges(marks, path)
    if spans is None:
        return False
    inst: list[list[int]] = [[], []]
    for k in (0, 1):
        for phase in ("forward", "backward"):
            inst[k] += _select(raw.ops, phase, [spans[phase][k]])
        inst[k] += _select(raw.ops, "optimizer", _param_ranges(marks, f"{path}.{k}."))
    if len(inst[0]) != len(inst[1]) or any(
        _sig(raw, raw.ops[a]) != _sig(raw, raw.ops[b]) for a, b in zip(inst[0], inst[1])
    ):
        return False
    plan = _correspond(raw, path, inst)
    if plan is None:
        return False
    _rewrite(raw, path, repeat, inst, *plan)
    return True


def _correspond(raw: RawGraph, path: str, inst: list[list[int]]) -> Any:
    """(instance-1 -> instance-0 tensor map, template input remap, carry pairs) or None."""
    corr: dict[int, int] = {}
    names = {raw.tensors[i].name: i for i in raw.inputs}
    p0, p1 = f"{path}.0.", f"{path}.1."
    for i in raw.inputs:
        name = raw.tensors[i].name
        if name.startswith(p1) and p0 + name[len(p1):] in names:
            corr[i] = names[p0 + name[len(p1):]]
    made = [{t for i in inst[k] for t in raw.ops[i].outputs} for k in (0, 1)]
    for a, b in zip(inst[1], inst[0]):
        corr.update(zip(raw.ops[a].outputs, raw.ops[b].outputs))
    remap: dict[int, int] = {}
    carry: set[tuple[int, int]] = set()
    for a, b in zip(inst[1], inst[0]):
        for u1, u0 in zip(raw.ops[a].inputs, raw.ops[b].inputs):
            if corr.get(u1) == u0 or u1 == u0:
                continue
            if u1 in made[0] and u0 not in made[0]:  # forward: instance 1 reads instance 0
                carry.add((u0, u1))
            elif u0 in made[1] and u1 not in made[1]:  # backward: instance 0 reads instance 1
                remap[u0] = u1
                carry.add((u1, corr[u0]))
            else:
                return None
    return corr, remap, sorted(carry)


def _rewrite(raw: RawGraph, path: str, repeat: int, inst: list[list[int]],
             corr: dict[int, int], remap: dict[int, int], carry: list[tuple[int, int]]) -> None:
    drop_ops = set(inst[1])
    keep = set(inst[0])
    dead = set(corr)  # every instance-1 tensor
    p0 = f"{path}.0."
    for i in inst[0]:
        op = raw.ops[i]
        op.block = path
        op.inputs = [remap.get(t, t) for t in op.inputs]
        for tid in op.outputs:
            raw.tensors[tid].block = path
    for i, other in enumerate(raw.ops):
        if i not in keep and i not in drop_ops:
            other.inputs = [corr.get(t, t) for t in other.inputs]
    # views keep pointing at live storage: template views at the carry-in, others at instance 0
    root_remap = {raw.root(a): raw.root(b) for a, b in remap.items()}
    for info in raw.tensors:
        if info.view_of is not None:
            info.view_of = root_remap.get(info.view_of, corr.get(info.view_of, info.view_of))
    params = nbytes = 0
    for tid in raw.inputs:  # instance 0's parameters and optimizer state are the template's
        info = raw.tensors[tid]
        if info.name.startswith(p0):
            info.block = path
            if info.role == "parameter":
                params += math.prod(info.shape)
                nbytes += info.bytes
    raw.ops = [op for i, op in enumerate(raw.ops) if i not in drop_ops]
    raw.inputs = [t for t in raw.inputs if t not in dead]
    raw.outputs = [t for t in raw.outputs if t not in dead]
    raw.blocks.append(Block(path, repeat, tuple(carry), nbytes, params))
