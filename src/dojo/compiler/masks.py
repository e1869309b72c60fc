"""Dropout masks as a GPU keeps them: 1 byte per element (`work.model_work`'s traffic and
saved bytes)."""

from __future__ import annotations

import math

from dojo.compiler import fusion
from dojo.graph import Graph, Op
from dojo.graph.analysis import root


def dropout_masks(graph: Graph) -> set[int]:
    """Root ids of dropout masks. The capture fills a float tensor with bernoulli; PyTorch's
    dropout on a GPU (native_dropout) writes and keeps a 1-byte mask, as Megatron-LM's memory
    accounting assumes: masks are counted at 1 byte per element, in memory and in traffic."""
    return {root(graph, t).id for op in graph.ops if "bernoulli" in op.target
            for t in op.outputs}


def mask_excess(graph: Graph, group: list[Op], readers: dict[int, set[int]],
                 masks: set[int], scale: float) -> float:
    """Captured bytes the group moves for dropout masks beyond 1 byte per element (the caller
    multiplies by `scale`, hence the division)."""
    if not masks:
        return 0.0
    moved = fusion.moved_tensors(graph, group, readers)
    return sum(graph.tensors[r].bytes - math.prod(graph.tensors[r].shape) / scale
               for r in moved & masks)
