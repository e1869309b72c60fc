"""Which convolutions eager PyTorch runs through oneDNN on a CPU (one intra-op thread, FP32).

PyTorch picks a CPU convolution backend per call (`at::native::_select_conv_backend`,
`use_mkldnn` in aten/src/ATen/native/ConvUtils.h): a 2-D FP32 convolution goes to oneDNN when
(strided or dilated or batch >= 16 or a kernel other than 1x1 or more than one thread) and
(grouped or a kernel over 3x3 in both dimensions or batch > 1 or an input of more than 20,480
elements), else to the im2col path (`_slow_conv2d`). A oneDNN call sets up its primitive and
reorders its operands whatever its size (tens of microseconds, `Calibration.library_call_s`),
the im2col path does not: CNN stems and multi-camera batches pay it, single-image 3x3 stacks not.

PyTorch's CPU flash attention (`_scaled_dot_product_flash_attention_for_cpu` and its backward)
walks each (batch, head) in blocks of 32 query rows (64 from 192 rows on, 256 from 768), and under
a causal mask stops each block at the diagonal: it computes, exps and sums the scores of
`attention_scores` elements, work beyond its GEMMs' FLOPs (`Calibration.attention_score_s`).

The im2col path instead copies its input into a columns matrix of C_in kh kw rows by H_out
W_out columns per image (`unfolded2d_copy`, one short copy per row of the output) and, in the
backward, unfolds it again for the weight gradient and folds the columns' gradient back into
the input gradient (`unfolded2d_acc`): work in proportion to the columns matrix, not to the
GEMM's FLOPs, at a rate of its own (`Calibration.im2col_element_s`). A 1x1 kernel of stride 1
without padding uses its input as the columns matrix and unfolds nothing.
"""

from __future__ import annotations

import math

from dojo.graph import Graph, Op

CONVOLUTIONS = ("aten.convolution.default", "aten.convolution_backward.default")
# Captured ops that eager PyTorch issues inside another op's dispatch and that launch no
# kernel: `_unsafe_view`, the reshape `matmul` applies to its `mm` output (and to a clone),
# a view whose schema does not declare the alias (the capture counts it as data movement).
INNER_VIEWS = frozenset({"aten._unsafe_view.default"})
SMALL_INPUT = 20480  # elements: up to this, batch 1 and kernels up to 3x3 take the im2col path


def attached_views(graph: Graph, groups: list[list[Op]]) -> tuple[int, ...]:
    """Per group of `graph`'s ops (in order), the captured view ops (rule "view") that eager
    PyTorch issues just before it: each view of a phase goes to the next grouped op of that
    phase and block template (a view after a template's last grouped op, to that op's group),
    so a block's views repeat with it. Every view is a dispatch of its own in eager mode (a
    TorchDispatchMode over a step sees the captured `view`, `t` and `transpose` counts
    exactly: docs/benchmarks.md, nineteenth round); views of the optimizer phase, which no
    group holds, are left out."""
    where = {op.id: i for i, group in enumerate(groups) for op in group}
    out = [0] * len(groups)
    pending: dict[tuple[str, str | None], int] = {}
    last: dict[tuple[str, str | None], int] = {}
    for op in graph.ops:
        key = (op.phase, op.block)
        if op.rule == "view":
            pending[key] = pending.get(key, 0) + 1
        elif op.id in where:
            last[key] = where[op.id]
            out[where[op.id]] += pending.pop(key, 0)
    for key, n in pending.items():
        if key in last:
            out[last[key]] += n
    return tuple(out)


def onednn_calls(group: list[Op], graph: Graph, threads: int = 1) -> int:
    """How many of `group`'s ops are 2-D convolutions (forward or backward) that eager PyTorch
    hands to oneDNN on a CPU with `threads` intra-op threads."""
    return sum(1 for op in group if op.target in CONVOLUTIONS and _onednn(op, graph, threads))


# PyTorch hands an exact GELU and its backward (`approximate="none"`; the tanh variant is
# captured as `aten.gelu.default[tanh]`) to oneDNN's eltwise primitive when the input is FP32
# or BF16 with more than one element (`use_mkldnn` in aten/src/ATen/native/Activation.cpp),
# which sets itself up on every call: microseconds a small GELU's own work does not reach
# (`Calibration.eltwise_call_s`; bench/phase_dispatch.py --gelu).
ELTWISE_ONEDNN = frozenset({"aten.gelu.default", "aten.gelu_backward.default"})
_ELTWISE_DTYPES = frozenset({"float32", "bfloat16"})


def eltwise_calls(group: list[Op], graph: Graph) -> int:
    """How many of `group`'s ops are exact GELUs (forward or backward) that eager PyTorch runs
    through oneDNN's eltwise primitive on a CPU."""
    count = 0
    for op in group:
        if op.target not in ELTWISE_ONEDNN or not op.inputs:
            continue
        x = graph.tensors[op.inputs[-1]]  # backward: (grad_output, self); forward: (self,)
        if x.dtype in _ELTWISE_DTYPES and math.prod(x.shape) > 1:
            count += 1
    return count


CPU_FLASH = "_scaled_dot_product_flash_attention_for_cpu"


def query_block(rows: int) -> int:
    """Query rows per block of PyTorch's CPU flash attention for a sequence of `rows`."""
    return 256 if rows >= 768 else 64 if rows >= 192 else 32


def attention_scores(group: list[Op], graph: Graph) -> int:
    """Score elements `group`'s CPU flash-attention ops (forward or backward) compute: per
    (batch, head), s_q x s_k, or under a causal mask (target suffix `[causal]`) each query
    block's rows times the keys up to the block's last row."""
    total = 0
    for op in group:
        if CPU_FLASH not in op.target:
            continue
        first = 1 if "_backward" in op.target else 0  # backward: (grad_out, q, k, v, ...)
        if len(op.inputs) < first + 2:
            continue
        q = graph.tensors[op.inputs[first]].shape
        k = graph.tensors[op.inputs[first + 1]].shape
        if len(q) != 4 or len(k) != 4:
            continue
        heads, rows, keys = q[0] * q[1], q[2], k[2]
        if not op.target.endswith("[causal]"):
            total += heads * rows * keys
            continue
        block = query_block(rows)
        total += heads * sum(min(block, rows - m) * min(m + block, keys)
                             for m in range(0, rows, block))
    return total


def unfolded_elements(group: list[Op], graph: Graph, threads: int = 1) -> int:
    """Elements of the columns matrices that `group`'s 2-D convolutions on the im2col path
    (forward or backward; not oneDNN's) unfold: batch x C_in x kh x kw x H_out x W_out each
    (the weight's second dimension is C_in per group)."""
    total = 0
    for op in group:
        if op.target not in CONVOLUTIONS or _onednn(op, graph, threads):
            continue
        shapes = _shapes(op, graph)
        if shapes is None:
            continue
        x, w, out = shapes
        if w[2] == w[3] == 1 and tuple(out[2:]) == tuple(x[2:]):
            continue  # 1x1, stride 1, no padding: the input is the columns matrix
        total += x[0] * w[1] * w[2] * w[3] * out[2] * out[3]
    return total


def _shapes(op: Op, graph: Graph) -> tuple[tuple[int, ...], ...] | None:
    """(input, weight, output) shapes of a 2-D convolution op (forward: (input, weight, ...)
    -> output; backward: (grad_out, input, weight, ...)), None if not 2-D."""
    first = 0 if op.target == CONVOLUTIONS[0] else 1
    if len(op.inputs) < first + 2:
        return None
    x = graph.tensors[op.inputs[first]].shape
    w = graph.tensors[op.inputs[first + 1]].shape
    out = graph.tensors[op.inputs[0] if first else op.outputs[0]].shape
    if len(x) != 4 or len(w) != 4 or len(out) != 4:
        return None
    return tuple(x), tuple(w), tuple(out)


def _onednn(op: Op, graph: Graph, threads: int) -> bool:
    shapes = _shapes(op, graph)
    if shapes is None:
        return False
    x, w, out = shapes
    kh, kw = w[2], w[3]
    # a stride of 1 leaves at least H - k + 1 rows (padding only adds); fewer means strided
    strided = out[2] < x[2] - kh + 1 or out[3] < x[3] - kw + 1
    grouped = w[1] != x[1]
    first_rule = strided or x[0] >= 16 or kh != 1 or kw != 1 or threads > 1
    second_rule = grouped or (kh > 3 and kw > 3) or x[0] > 1 or math.prod(x) > SMALL_INPUT
    return first_rule and second_rule
