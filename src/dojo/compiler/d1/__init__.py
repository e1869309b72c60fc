"""The D1 node-level compiler: ops onto training nodes, SRAM planning, Dojo collectives.

Everything reads its figures from the `SystemSpec` (docs/d1.md explains each model):
- `map_matmul`: SUMMA-style 2D (plus split-k) decomposition over a rectangle of nodes;
- `map_vector`, `map_rowwise`, `map_attention`: streamed SIMD work and fused attention;
- `d1_op_time`: one op (an `OpCost` or a shape) on one chip, in seconds with a breakdown;
- `plan_sram`: SRAM first, then DIP HBM, or `SramOutOfMemory` naming chips and bytes;
- `best_collective` and friends, `host_input_time`: communication on and between tiles.
"""

from dojo.compiler.d1.collectives import (
    CollectiveTime,
    HostTransfer,
    best_collective,
    cross_tile_collective,
    host_input_time,
    ring_time,
    tile_collective,
    zplane_collective,
)
from dojo.compiler.d1.figures import ChipFigures, chip_figures
from dojo.compiler.d1.matmul import Mapping, map_matmul
from dojo.compiler.d1.memory import SramOutOfMemory, SramPlan, plan_sram
from dojo.compiler.d1.ops import (
    AttentionShape,
    MatmulShape,
    OpTime,
    RowwiseShape,
    StreamedOp,
    d1_op_time,
    map_attention,
    map_rowwise,
    map_vector,
)
from dojo.compiler.d1.stream import StreamShare, chip_path, stream_share

__all__ = [
    "AttentionShape", "ChipFigures", "CollectiveTime", "HostTransfer", "Mapping", "MatmulShape",
    "OpTime", "RowwiseShape", "SramOutOfMemory", "SramPlan", "StreamShare", "StreamedOp",
    "best_collective", "chip_figures", "chip_path", "cross_tile_collective", "d1_op_time",
    "host_input_time", "map_attention", "map_matmul", "map_rowwise", "map_vector", "plan_sram",
    "ring_time", "stream_share", "tile_collective", "zplane_collective",
]
