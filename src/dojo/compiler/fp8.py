"""Activations under precision=fp8: the linears' inputs kept in FP8 (TransformerEngine).

A TransformerEngine linear run in FP8 keeps, for its weight-gradient GEMM, the FP8 copy of its
input that its forward GEMM read, not the BF16 tensor: so a tensor of the block saved for the
backward only because weight GEMMs read it (the norm's output before QKV and FC1, the attention
output before the projection, the activation before FC2) is kept at 1 byte per element instead
of 2; one that another op's backward also reads (FlashAttention's backward reads its output)
stays in BF16 and the FP8 copy comes on top. The routed experts' grouped GEMMs (GroupedLinear)
keep their inputs the same way: a batched matmul of the backward whose output has the shape of
an expert weight is their weight gradient. Found from the captured graph: a saved tensor of
the block (made by its forward, read by the backward) whose backward readers, views aside,
include weight matmuls (`mm`/`addmm`), sized as `work._saved` sizes it on one device of the tp
split.
"""

from __future__ import annotations

from dataclasses import replace

from dojo.compiler import fusion
from dojo.compiler.modules import selection
from dojo.compiler.tpflow import device_graph, split_region, weight_derived
from dojo.compiler.work import (
    ModelWork,
    is_attention_core,
    main_block,
)
from dojo.graph import Graph, Op
from dojo.graph.analysis import root
from dojo.plan.policies import op_class


def fp8_saved_change(graph: Graph, tp: int, sp: bool, scale: float) -> float:
    """Change in one block instance's saved bytes on one device when the linears keep FP8
    inputs (negative: fewer bytes; see the module docstring)."""
    return sum(fp8_changes(graph, tp, sp, scale).values())


def fp8_changes(graph: Graph, tp: int, sp: bool, scale: float) -> dict[int, float]:
    """Per saved tensor of the block (root id), the change FP8 makes to its bytes on one device:
    -half when only weight GEMMs read it in the backward (kept in FP8 alone), +half when other
    ops read it too (the FP8 copy on top of the BF16 tensor)."""
    block = main_block(graph)
    if block is None:
        return {}
    weights = weight_derived(graph)
    carry = graph.block(block).carry
    residual = 1 if carry else 0
    split = split_region(graph, residual > 0) if tp > 1 else set()
    made = {root(graph, t).id for op in graph.ops if op.phase == "forward" and op.block == block
            for t in op.outputs}
    experts = _expert_weight_shapes(graph)
    readers: dict[int, list[str | None]] = {}
    for op in graph.ops:
        if op.phase != "backward" or op.rule in fusion.FREE_RULES:
            continue
        kind = op_class(op.target)
        if kind == "bmm" and any(graph.tensors[o].shape in experts for o in op.outputs):
            kind = "mm"   # a routed expert's weight gradient: GroupedLinear keeps FP8 inputs
        for t in {root(graph, i).id for i in op.inputs}:
            if t in made and t not in weights:
                readers.setdefault(t, []).append(kind)
    change: dict[int, float] = {}
    for rid, classes in readers.items():
        if "mm" not in classes:
            continue
        r = graph.tensors[rid]
        if not r.dtype.startswith("float"):
            continue
        half = r.bytes * scale / (tp if (sp or rid in split) else 1) / 2
        change[rid] = -half if all(c == "mm" for c in classes) else half
    return change


def fp8_dropped_change(graph: Graph, modules: frozenset[str], tp: int, sp: bool,
                       scale: float, fused_attention: bool = True) -> float:
    """Change FP8 makes to the bytes a module recompute policy (`compiler.modules`) drops from
    one block instance: a dropped tensor is dropped as FP8 keeps it (1 byte per element when
    only weight GEMMs read it, 2 + 1 when others read it too), not at the activation
    precision the policy's own compile sizes it at (`work._saved`)."""
    graph = device_graph(graph, fused_attention)
    sel = selection(graph, modules, lambda o: is_attention_core(o, graph))
    made: dict[int, Op] = {}
    for op in graph.ops:
        for t in op.outputs if op.phase == "forward" else ():
            made.setdefault(root(graph, t).id, op)
    return sum(c for rid, c in fp8_changes(graph, tp, sp, scale).items()
               if rid in made and sel.drops(made[rid], rid))


def _expert_weight_shapes(graph: Graph) -> set[tuple[int, ...]]:
    """Shapes of the routed experts' stacked weights (parameters `*.experts.*`, 3-d)."""
    return {t.shape for t in graph.tensors if t.role == "parameter" and len(t.shape) == 3
            and ".experts." in f".{t.name}"}


def fp8_activations(work: ModelWork, graph: Graph, tp: int, sp: bool, scale: float,
                    fused_attention: bool = True) -> ModelWork:
    """`work` with its block's saved bytes as TransformerEngine keeps them under FP8."""
    if work.block is None:
        return work
    graph = device_graph(graph, fused_attention)
    saved = work.block.saved_bytes + fp8_saved_change(graph, tp, sp, scale)
    return replace(work, block=replace(work.block, saved_bytes=saved))
