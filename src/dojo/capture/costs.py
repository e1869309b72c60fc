"""FLOP and byte formulas for ATen ops (the contract is written out in docs/ir.md).

FLOP come first from `torch.utils.flop_counter` (matmul, conv, attention); this module registers
there the CPU attention kernels it lacks, so FlopCounterMode counts them too. Every other op gets
a documented formula, with N the element count of the named tensor:

- views and metadata ops (schema says the output aliases an input, not written): 0 FLOP, 0 bytes;
- pointwise ops (ATen tag `pointwise`): N(output) FLOP, times the weight in `_POINTWISE_WEIGHT`
  for fused ones (addcmul, addcdiv, lerp: 2) and transcendental ones (erf, exp, tanh and the
  activations built on them, from their measured cost; see `_POINTWISE_WEIGHT`);
- reductions (tag `reduction`), and the scans, selections and accumulating scatters of
  `_REDUCTION_LIKE` (cumsum, topk, index_add, scatter_add: one add or compare per element):
  N(largest input) FLOP;
- `_NORM_SOFTMAX`: a fixed number of FLOP per element of the first input (layer/batch/group norm
  forward 5, backward 8; softmax forward 4, backward 3; log-softmax forward 4, backward 3; losses,
  pooling, embedding backward); `_PER_OUTPUT` likewise per output element (grid sampling: 8);
- `_ZERO_FLOP`: data movement and fills: 0 FLOP, bytes counted;
- anything else: 0 FLOP with rule "unknown"; the op stays in the graph and is reported.

Bytes: `bytes_read` is the sum of the distinct tensor inputs' sizes, `bytes_written` of the
outputs' sizes, each numel x itemsize of the view the op sees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils import flop_counter

aten = torch.ops.aten

# FLOP per output element of pointwise ops that are not one operation. Fused multiply-adds: 2.
# Transcendental functions are evaluated as polynomial/rational approximations (erf: a rational
# of degree ~8 plus a division; exp: range reduction and a degree-6 polynomial), so they weigh
# what one core measures them at against the FLOP-counted norms and softmax
# (bench/calibrate_cpu.py `pointwise_weights`, [64 x 256] and [64 x 1024] FP32: gelu 6-12,
# gelu_backward 9-16, erf 8-9, exp 5-6, sigmoid and silu 5-6, silu_backward 6-7, tanh 18-19).
# GELU's tanh approximation (GPT-2's) is its own kernel, two to three times the exact one's
# cost per element: 16-18 forward, 18-19 backward (Intel Xeon with AVX-512, 2026-11-30; on the
# AMD EPYC of earlier rounds the step's GELU measured twice what weight 8 gave). `_variant`
# names it.
# Counted FLOPs only; the op's bytes still bound it on a device whose vector units keep up.
_POINTWISE_WEIGHT: dict[str, int] = {
    "addcmul": 2, "addcdiv": 2, "lerp": 2,
    "gelu": 8, "gelu_backward": 12, "erf": 8, "exp": 5, "sigmoid": 5, "silu": 5,
    "silu_backward": 6, "tanh": 18, "gelu_tanh": 16, "gelu_tanh_backward": 18,
    "sigmoid_backward": 3, "tanh_backward": 3,  # g (1 - y) y and g (1 - y^2): 3 operations
}

# op packet name -> FLOP per element of the first tensor input
_NORM_SOFTMAX: dict[str, int] = {
    "native_layer_norm": 5,
    "native_layer_norm_backward": 8,
    "native_batch_norm": 5,
    "_native_batch_norm_legit": 5,
    "_native_batch_norm_legit_functional": 5,
    "_native_batch_norm_legit_no_training": 5,
    "native_batch_norm_backward": 8,
    "native_group_norm": 5,
    "native_group_norm_backward": 8,
    "_softmax": 4,
    "_safe_softmax": 4,  # softmax that returns 0 on fully masked rows (SDPA's math fallback)
    "_softmax_backward_data": 3,
    "_log_softmax": 4,
    "_log_softmax_backward_data": 3,
    "nll_loss_forward": 1,
    "nll_loss_backward": 1,
    "nll_loss2d_forward": 1,
    "nll_loss2d_backward": 1,
    "embedding_dense_backward": 1,
    "max_pool2d_with_indices": 1,
    "max_pool2d_with_indices_backward": 1,
    "avg_pool2d": 1,
    "avg_pool2d_backward": 1,
    "_adaptive_avg_pool2d": 1,
    "_adaptive_avg_pool2d_backward": 1,
    "binary_cross_entropy_with_logits": 5,  # sigmoid, log, two mul-adds
    "grid_sampler_2d_backward": 16,  # per grad-output element: twice the bilinear forward
}

# op packet name -> FLOP per element of the first output
_PER_OUTPUT: dict[str, int] = {
    "grid_sampler_2d": 8,  # bilinear: 4 corner weights x (mul + add)
}

_ZERO_FLOP: frozenset[str] = frozenset({
    "clone", "_to_copy", "copy", "copy_", "cat", "stack", "embedding", "index", "index_select",
    "gather", "scatter", "slice_scatter", "select_scatter", "constant_pad_nd", "zeros", "ones",
    "zeros_like", "ones_like", "empty", "empty_like", "full", "full_like", "fill", "fill_",
    "zero_", "arange", "new_zeros", "new_ones", "new_empty", "new_full", "scalar_tensor",
    "_unsafe_view", "empty_strided", "new_empty_strided", "lift_fresh_copy", "repeat", "tril",
    "triu", "masked_fill", "where", "_reshape_copy", "contiguous", "randperm", "rand", "randn",
    "randint", "bernoulli", "native_dropout", "native_dropout_backward", "index_put",
    "_index_put_impl", "expand_copy", "unfold_backward", "roll", "flip", "select_backward",
    "slice_backward", "index_select_backward", "embedding_backward", "diagonal_backward",
})


# Untagged ops that pass over their input once with one add or compare per element (an MoE
# router's top-k, its dispatch's cumsum and index_add, the gather's backward scatter_add).
_REDUCTION_LIKE: frozenset[str] = frozenset({"cumsum", "topk", "index_add", "scatter_add"})


def _register_cpu_attention() -> None:
    """Teach FlopCounterMode the CPU flash-attention kernels (same formula as the GPU ones)."""
    reg = flop_counter.flop_registry
    fwd = aten._scaled_dot_product_flash_attention_for_cpu
    bwd = aten._scaled_dot_product_flash_attention_for_cpu_backward
    if fwd not in reg:

        @flop_counter.register_flop_formula(fwd)
        def _fwd(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
            return int(flop_counter.sdpa_flop_count(q, k, v))

    if bwd not in reg:

        @flop_counter.register_flop_formula(bwd)
        def _bwd(g: Any, q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None,
                 **kw: Any) -> int:
            return int(flop_counter.sdpa_backward_flop_count(g, q, k, v))


_register_cpu_attention()


def causal_mark(op: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    """`[causal]` for a fused attention call made with is_causal=True (its kernel skips the
    tiles above the diagonal: about half the FLOPs the formula counts), else "". The flag is
    read by its schema name, wherever the overload puts it."""
    if "_scaled_dot_product_flash_attention" not in op.overloadpacket.__name__:
        return ""
    names = [a.name for a in op._schema.arguments]
    if "is_causal" not in names:
        return ""
    i = names.index("is_causal")
    flag = kwargs.get("is_causal", args[i] if i < len(args) else False)
    return "[causal]" if flag is True else ""


def variant_mark(op: Any, kwargs: dict[str, Any]) -> str:
    """`[tanh]` for GELU or its backward called with approximate="tanh", else "": the two
    variants are different kernels on an eager CPU (the exact one goes through oneDNN,
    `dojo.compiler.eager_cpu.eltwise_calls`), and the target is all the graph keeps of a call."""
    name = op.overloadpacket.__name__
    return "[tanh]" if _variant(name.rstrip("_"), kwargs).startswith("gelu_tanh") else ""


def nbytes(t: torch.Tensor) -> int:
    """numel x itemsize of the view `t` (bytes)."""
    return int(t.numel()) * t.element_size()


def is_view(op: Any) -> bool:
    """True when `op`'s first result aliases an input without writing it (view, t, split...)."""
    returns = op._schema.returns
    if not returns or returns[0].alias_info is None:
        return False
    return not any(a.alias_info is not None and a.alias_info.is_write for a in op._schema.arguments)


def flops_of(op: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any,
             tensors_in: Sequence[torch.Tensor],
             tensors_out: Sequence[torch.Tensor]) -> tuple[int, str]:
    """(FLOP, rule) for one call of ATen overload `op` (args hold tensors with real shapes)."""
    packet = op.overloadpacket
    if packet in flop_counter.flop_registry:
        count = flop_counter.flop_registry[packet](*args, **kwargs, out_val=out)
        return int(count), "flop_counter"
    name = packet.__name__
    if is_view(op):
        return 0, "view"
    if name in _NORM_SOFTMAX:
        first = tensors_in[0].numel() if tensors_in else 0
        return _NORM_SOFTMAX[name] * int(first), "norm_softmax"
    if name in _PER_OUTPUT:
        first_out = tensors_out[0].numel() if tensors_out else 0
        return _PER_OUTPUT[name] * int(first_out), "norm_softmax"
    if name in _ZERO_FLOP or name.rstrip("_") in _ZERO_FLOP:
        return 0, "data_movement"
    tags = op.tags
    if torch.Tag.pointwise in tags:
        n = sum(int(t.numel()) for t in tensors_out[:1])
        return _POINTWISE_WEIGHT.get(_variant(name.rstrip("_"), kwargs), 1) * n, "pointwise"
    if torch.Tag.reduction in tags or name.rstrip("_") in _REDUCTION_LIKE:
        n = max((int(t.numel()) for t in tensors_in), default=0)
        return n, "reduction"
    return 0, "unknown"


def _variant(name: str, kwargs: dict[str, Any]) -> str:
    """The `_POINTWISE_WEIGHT` key of a pointwise op whose keyword picks another kernel: GELU
    and its backward with `approximate="tanh"` (keyword-only in their schemas)."""
    if name in ("gelu", "gelu_backward") and kwargs.get("approximate") == "tanh":
        return name.replace("gelu", "gelu_tanh")
    return name


def shape_of(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)
