"""Parameter tensors per section of a captured step: what an eager optimizer loops over.

An eager step spends host time per parameter tensor outside its captured ops (the optimizer's
per-tensor bookkeeping, `zero_grad`, one gradient-accumulation add per extra micro-batch:
`dojo.sim.costs.DeviceModel.host_step_time`), so the simulator needs the count per pipeline
stage. Sections follow `dojo.compiler.work`: 'pre' before the repeated block, 'block' (one
instance), 'post' after it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from dojo.graph import Graph
from dojo.graph.analysis import root


def param_sizes_by_section(graph: Graph, block: str | None,
                           labels: Sequence[str]) -> dict[str, list[int]]:
    """Element counts of the trainable parameter tensors per section ('pre', 'block' for one
    block instance, 'post'), `labels` being each op's section in `graph.ops` order. A parameter
    belongs to the block when the template holds it, else to the section of its first reader
    (a parameter only the block reads, or none, counts as 'pre')."""
    first_use: dict[int, str] = {}
    for op, label in zip(graph.ops, labels):
        for t in op.inputs:
            first_use.setdefault(root(graph, t).id, label)
    made = {tid for op in graph.ops for tid in op.outputs}
    out: dict[str, list[int]] = {}
    for info in graph.tensors:
        if info.role != "parameter" or info.view_of is not None or info.id in made:
            continue
        if block is not None and info.block == block:
            label = "block"
        else:
            label = first_use.get(info.id, "pre")
            label = "pre" if label == "block" else label
        out.setdefault(label, []).append(math.prod(info.shape))
    return out


def tied_parameters(graph: Graph, block: str | None, labels: Sequence[str]) -> list[int]:
    """Root ids of the trainable parameters that forward ops of both the 'pre' and the 'post'
    section read (outside the block): a token embedding tied to the LM head (GPT, BLOOM). A
    pipeline keeps a copy of each on its first and its last stage and sums their gradients
    between the two every step (Megatron-LM's embedding group); an untied head (Llama) reads
    only its own weight, and a model without a block has no 'post' forward."""
    readers: dict[int, set[str]] = {}
    for op, label in zip(graph.ops, labels):
        if op.phase == "forward" and label in ("pre", "post"):
            for t in op.inputs:
                readers.setdefault(root(graph, t).id, set()).add(label)
    made = {tid for op in graph.ops for tid in op.outputs}
    return [info.id for info in graph.tensors
            if info.role == "parameter" and info.view_of is None and info.id not in made
            and (block is None or info.block != block)
            and readers.get(info.id, set()) >= {"pre", "post"}]


def param_tensors_by_section(graph: Graph, block: str | None,
                             labels: Sequence[str]) -> dict[str, int]:
    """Trainable parameter tensors per section (see `param_sizes_by_section`)."""
    return {k: len(v) for k, v in param_sizes_by_section(graph, block, labels).items()}


# Graph meta key: parameter names of the linears the model keeps whole over tensor parallelism
# (dojo.compiler.replicated).
META_KEY = "tp_replicated"
# Graph meta: the class of each module path, repeated modules' indices as "*"
# ("blocks.*.attn_norm=RMSNorm;..."): what code an op's `layer` runs (`dojo.compiler.code`).
CODE_KEY = "module_classes"
# Graph meta: how many nn.Modules the model holds (every one; an eager step walks them all in
# `model.train()` and `zero_grad`, `Calibration.module_walk_s`).
MODULES_KEY = "modules"


def site_path(path: str) -> str:
    """`path` with the indices of repeated modules as "*" (`blocks.3.attn` -> `blocks.*.attn`)."""
    return ".".join("*" if part.isdigit() else part for part in path.split("."))


def module_classes(model: Any) -> str:
    """`CODE_KEY`'s value for `model` (an nn.Module): "site_path=module.QualName" per module,
    ";"-joined."""
    sites = {site_path(path): f"{type(mod).__module__}.{type(mod).__qualname__}"
             for path, mod in model.named_modules() if path}
    return ";".join(f"{k}={v}" for k, v in sorted(sites.items()))


def declared_names(model: object) -> str:
    """Comma-separated parameter names of the children that modules of `model` (an nn.Module)
    declare in a class attribute `tp_replicated` (Megatron's "duplicated" linears)."""
    names = []
    for path, module in model.named_modules():  # type: ignore[attr-defined]
        for child in getattr(module, "tp_replicated", ()):
            sub = getattr(module, child, None)
            for name, _ in sub.named_parameters() if sub is not None else ():
                names.append(".".join(p for p in (path, child, name) if p))
    return ",".join(names)
