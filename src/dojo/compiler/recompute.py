"""Op-level recompute policies (`recompute=ops:mm+attention`, `matmuls`; dojo.plan.policies):
the memory and recompute work of a checkpointed block that keeps some matmul outputs.

As PyTorch's selective activation checkpointing runs a block under a policy: the forward keeps
the block's input (the checkpoint) and the outputs of every op of a saved class (MUST_SAVE: kept
in the cache whether or not the backward reads them); the backward reruns the block's forward
except those ops, whose outputs come from the cache. From the captured graph, on one device of
the tensor-parallel split:
- kept bytes = the block's input (1/tp with sp) + the outputs of its forward ops of a saved
  class, each sized as the activation accounting sizes saved tensors (`work._saved`: at the
  plan's precision, 1/tp where the dataflow splits it, a fused attention kernel's row
  statistics in FP32);
- recompute work = the block's forward kernels less the saved ops (every vector kernel and every
  matmul of an unsaved class runs again; with `mm` unsaved the tp collectives of the forward
  run again too);
- during the backward one block's recomputed tensors (its saved bytes under `none` less the kept
  ones) are live at a time.
The result rides in the block's `recompute_selective` and `selective_saved` slots, so the
program's chunks and the memory walk treat it as they treat `selective`.
"""

from __future__ import annotations

import math
from dataclasses import replace

from dojo.compiler.tpflow import device_graph, split_region, weight_derived
from dojo.compiler.work import (
    ModelWork,
    main_block,
)
from dojo.graph import Graph
from dojo.graph.analysis import root
from dojo.plan.policies import op_class


def kept_bytes(graph: Graph, classes: frozenset[str], tp: int, sp: bool, scale: float) -> float:
    """Bytes of the outputs of the block's forward ops whose class is in `classes`, per block
    instance on one device of the tp split (without the block's input)."""
    block = main_block(graph)
    if block is None:
        return 0.0
    weights = weight_derived(graph)
    carry = graph.block(block).carry
    residual = math.prod(graph.tensors[carry[0][0]].shape) if carry else 0
    split = split_region(graph, residual > 0) if tp > 1 else set()
    seen: set[int] = set()
    total = 0.0
    for op in graph.ops:
        if op.phase != "forward" or op.block != block or op_class(op.target) not in classes:
            continue
        for i, t in enumerate(op.outputs):
            r = root(graph, t)
            if r.id in seen or r.id in weights:
                continue
            seen.add(r.id)
            div = tp if (sp or r.id in split) else 1
            statistic = "attention" in op.target and i > 0
            floating = r.dtype.startswith("float") and not statistic
            total += r.bytes * (scale if floating else 1.0) / div
    return total


def apply_policy(work: ModelWork, graph: Graph, classes: frozenset[str], tp: int, sp: bool,
                 scale: float, fused_attention: bool = True) -> ModelWork:
    """`work` with its block's selective slots holding the policy's recompute kernels and the
    bytes it drops (`selective_saved` = saved under none - kept; see the module docstring).
    `graph` is the capture `work` was compiled from (`fused_attention` as `model_work` had)."""
    block = work.block
    if block is None:
        return work
    graph = device_graph(graph, fused_attention)
    kept = block.input_bytes + kept_bytes(graph, classes, tp, sp, scale)
    rerun = tuple(c for c in block.forward
                  if not (c.kind == "matrix" and op_class(c.target) in classes))
    return replace(work, block=replace(block, recompute_selective=rerun,
                                       selective_saved=block.saved_bytes - kept))
