"""The FP32 row statistics a tp group all-reduces where a norm, softmax or loss reads features
split by a column-parallel op (`dojo.compiler.tpflow.tp_collectives`), Megatron-LM's way."""

from __future__ import annotations

from dojo.graph import Graph, Op
from dojo.graph.analysis import root

# Per row, the FP32 partial statistics the shards of a feature-split row combine, as the
# all-reduces that carry them (statistics per row in each), forward and backward: a norm's sum
# and sum of squares in one; a softmax's max, then its sum of exponentials (a max and a sum are
# two reductions), and in backward the row sum of its gradient times its output; the loss's
# target logit. A log-softmax read only by the loss is Megatron-LM's vocab-parallel cross
# entropy (`_cross_entropy`), whose statistics are in `CROSS_ENTROPY`.
ROW_STATS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "native_layer_norm": ((2,), (2,)), "native_group_norm": ((2,), (2,)),
    "_softmax": ((1, 1), (1,)), "_safe_softmax": ((1, 1), (1,)),
    "_log_softmax": ((1, 1), (1,)), "nll_loss_forward": ((1,), ())}
# Megatron-core's fused vocab-parallel cross entropy: an all-reduce (max) of the row max, then
# one all-reduce (sum) of the target logit and the sum of exponentials together; its backward,
# softmax minus the one-hot target, is local to each vocabulary shard.
CROSS_ENTROPY = {"_log_softmax": ((1,), ()), "nll_loss_forward": ((2,), ())}


def _cross_entropy(graph: Graph, op: Op, made_by: dict[int, Op],
                   readers: dict[int, list[Op]]) -> bool:
    """Whether `op` is half of a cross entropy: a log-softmax read in forward only by nll
    losses, or an nll loss over such a log-softmax."""
    soft = made_by.get(root(graph, op.inputs[0]).id) if "nll_loss" in op.target else op
    if soft is None or "_log_softmax" not in soft.target or not soft.outputs:
        return False
    names = {o.target for o in readers.get(root(graph, soft.outputs[0]).id, ())
             if o.phase == "forward"}  # its backward reads it too
    return bool(names) and all("nll_loss_forward" in n for n in names)


def row_stat_counts(graph: Graph, op: Op, made_by: dict[int, Op], readers: dict[int, list[Op]]
                    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Statistics per row of each all-reduce `op` issues, (forward, backward); () for none.
    `readers`: storage root id -> the ops reading it. The caller checks that `op` reads
    features split by a column-parallel op."""
    name = op.target.split(".")[1] if "." in op.target else ""
    if name not in ROW_STATS:
        return (), ()
    return (CROSS_ENTROPY if _cross_entropy(graph, op, made_by, readers) else ROW_STATS)[name]
