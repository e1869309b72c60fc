"""dojo.graph: the one IR the pipeline shares (a training step as ops, tensors and blocks).

Pure Python and torch-free, so the planner, compiler and simulator can walk it cheaply.
"""

from __future__ import annotations

from dojo.graph.analysis import (
    PhaseTotals,
    StateBytes,
    peak_activation_bytes,
    phase_totals,
    rule_totals,
    schedule,
    state_bytes,
    top_ops,
)
from dojo.graph.ir import PHASES, ROLES, Block, Graph, Op, TensorInfo
from dojo.graph.serialize import dump, from_dict, from_json, to_dict, to_json

__all__ = [
    "PHASES",
    "ROLES",
    "Block",
    "Graph",
    "Op",
    "PhaseTotals",
    "StateBytes",
    "TensorInfo",
    "dump",
    "from_dict",
    "from_json",
    "peak_activation_bytes",
    "phase_totals",
    "rule_totals",
    "schedule",
    "state_bytes",
    "to_dict",
    "to_json",
    "top_ops",
]
