"""Megatron-LM tensor parallelism for the GPT blocks, with our own all-reduce autograd functions.

Why not DTensor's `parallelize_module`: on gloo/CPU it works for plain Linear chains, but the
GPT attention reshapes the fused QKV output by the *global* head count, which a column-sharded
DTensor does not know how to split per head without rewriting the module anyway; and every
DTensor op dispatches through the sharding propagator, which costs more than our tiny models'
matmuls. Two autograd functions (Megatron's `f` and `g`) give the same math with one all-reduce
per split region each way, deterministic on gloo.

Split per block (tp ranks r = 0..tp-1, heads and ffn divided evenly; `validate_plan` checks it):
- attn.qkv: column-parallel; rank r keeps the q, k and v rows of its heads.
- attn.proj: row-parallel; rank r keeps the input columns of its heads; bias added once, after
  the all-reduce.
- mlp.0: column-parallel (ffn rows); mlp.2: row-parallel (ffn columns).
The tied token embedding and LM head are split by vocabulary rows, with the vocabulary-parallel
cross entropy (`vocab_parallel`): per micro-batch an all-reduce of the embedding, f on the
head's input and two all-reduces in the loss. Norms and the position embedding stay replicated;
their gradients come out identical on every tp rank (identical inputs), so they need no tp
reduction. With sequence parallelism (sp=on, `sequence_parallel`) f and g become an all-gather
and a reduce-scatter along the sequence, and the norms, row-parallel biases and position
embedding see a slice of the tokens (their gradients are summed over tp once per step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dojo.errors import DojoError
from dojo.models.gpt import causal_attention


@dataclass(frozen=True)
class Shard:
    """Where a local parameter comes from: `source`[..., index along `dim`, ...] of the whole
    (unsharded) model's parameter `source`."""

    source: str
    dim: int
    index: Tensor


class _CopyToTP(torch.autograd.Function):
    """Megatron's f: identity forward; all-reduce of the input gradient in backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    """Megatron's g: all-reduce (sum of the partial products) forward; identity backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        import torch.distributed as dist

        out = x.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def enter_tp(x: Tensor, group: Any, sp: bool) -> Tensor:
    """Into a column-parallel linear: f (identity, all-reduce backward), or under sequence
    parallelism an all-gather of the sequence; identity without a group (tp = 1)."""
    if group is None:
        return x
    if sp:
        from dojo.runtime.sequence_parallel import gather_seq

        return gather_seq(x, group)  # (B, S/tp, H) -> (B, S, H)
    out: Tensor = _CopyToTP.apply(x, group)
    return out


def column_linear(linear: Callable[[Tensor], Tensor], x: Tensor, group: Any, sp: bool) -> Tensor:
    """`linear` (column-parallel, or a region of several that share their input) on
    `enter_tp(x)`; under sequence parallelism the gathered input is saved as this rank's slice
    and gathered again, once, in backward (`keep_shard`)."""
    whole = enter_tp(x, group, sp)  # (B, S, H)
    if group is None or not sp:
        out: Tensor = linear(whole)
        return out
    from dojo.runtime.sequence_parallel import keep_shard

    whole = whole.contiguous()  # so the linear saves a view of it, not a copy
    with keep_shard([whole], group):
        out = linear(whole)  # (B, S, out/tp)
    return out


def exit_tp(y: Tensor, group: Any, sp: bool) -> Tensor:
    """Out of a row-parallel linear: g (all-reduce), or under sequence parallelism a
    reduce-scatter onto this rank's sequence slice; identity without a group (tp = 1)."""
    if group is None:
        return y
    if sp:
        from dojo.runtime.sequence_parallel import reduce_scatter_seq

        return reduce_scatter_seq(y, group)  # (B, S, H) partial -> (B, S/tp, H)
    out: Tensor = _ReduceFromTP.apply(y, group)
    return out


class RowParallelLinear(nn.Module):
    """y = all_reduce(x_local @ W_local^T) + b: `linear` holds this rank's input columns (a plain
    nn.Linear, so precision policies apply to it); `bias` is whole and replicated."""

    def __init__(self, linear: nn.Linear, bias: nn.Parameter | None, group: Any,
                 sp: bool = False) -> None:
        super().__init__()
        self.linear = linear
        self.bias = bias
        self.group = group
        self.sp = sp

    def forward(self, x: Tensor) -> Tensor:
        y = exit_tp(self.linear(x), self.group, self.sp)  # (..., out), summed over tp
        return y if self.bias is None else y + self.bias


class ParallelAttention(nn.Module):
    """Causal self-attention over this rank's `heads` heads (of the block's total). With `sp`
    the input and output are sequence slices (B, S/tp, H); with `recompute_core` the attention
    core (QK^T, softmax, dropout, @V) is recomputed in backward (recompute=selective)."""

    def __init__(self, qkv: nn.Linear, proj: RowParallelLinear, heads: int, attention: str,
                 dropout: float, group: Any, sp: bool = False) -> None:
        super().__init__()
        self.qkv = qkv
        self.proj = proj
        self.heads = heads
        self.attention = attention
        self.dropout = dropout
        self.group = group
        self.sp = sp
        self.recompute_core = False

    def forward(self, x: Tensor) -> Tensor:
        qkv = column_linear(self.qkv, x, self.group, self.sp)  # (B, S, 3 H/tp)
        b, s, _ = qkv.shape
        local = self.qkv.out_features // 3
        q, k, v = qkv.split(local, dim=2)  # 3 x (B, S, H/tp)
        hd = local // self.heads
        q, k, v = (t.view(b, s, self.heads, hd).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        if self.recompute_core:
            from torch.utils.checkpoint import checkpoint

            y = checkpoint(self._core, q, k, v, p, use_reentrant=False)  # (B, nh/tp, S, hd)
        else:
            y = self._core(q, k, v, p)  # (B, nh/tp, S, hd)
        return self.proj(y.transpose(1, 2).reshape(b, s, local))  # (B, S, H)

    def _core(self, q: Tensor, k: Tensor, v: Tensor, p: float) -> Tensor:
        return causal_attention(q, k, v, p, self.attention)  # (B, nh/tp, S, hd)


class ParallelMLP(nn.Module):
    """fc (column-parallel) -> activation -> proj (row-parallel)."""

    def __init__(self, fc: nn.Linear, act: nn.Module, proj: RowParallelLinear, group: Any,
                 sp: bool = False) -> None:
        super().__init__()
        self.fc = fc
        self.act = act
        self.proj = proj
        self.group = group
        self.sp = sp

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.act(column_linear(self.fc, x, self.group, self.sp)))


def _rows(linear: nn.Linear, index: Tensor) -> nn.Linear:
    out = nn.Linear(linear.in_features, len(index), bias=linear.bias is not None)
    with torch.no_grad():
        out.weight.copy_(linear.weight[index])
        if linear.bias is not None:
            out.bias.copy_(linear.bias[index])
    return out


def _columns(linear: nn.Linear, index: Tensor, group: Any, sp: bool) -> RowParallelLinear:
    inner = nn.Linear(len(index), linear.out_features, bias=False)
    with torch.no_grad():
        inner.weight.copy_(linear.weight[:, index])
    bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None else None
    return RowParallelLinear(inner, bias, group, sp)


def column_parallel(linear: nn.Linear, index: Tensor, local: str, source: str
                    ) -> tuple[nn.Linear, dict[str, Shard]]:
    """Megatron's column-parallel split of `linear` (whole-model name `source`, local name
    `local`): output rows `index` of its weight and bias, and their `Shard`s."""
    shards = {f"{local}.weight": Shard(f"{source}.weight", 0, index)}
    if linear.bias is not None:
        shards[f"{local}.bias"] = Shard(f"{source}.bias", 0, index)
    return _rows(linear, index), shards


def row_parallel(linear: nn.Linear, index: Tensor, group: Any, sp: bool, local: str,
                 source: str) -> tuple[RowParallelLinear, dict[str, Shard]]:
    """Megatron's row-parallel split of `linear`: input columns `index` of its weight, the bias
    whole (added after the all-reduce), and their `Shard`s."""
    shards = {f"{local}.linear.weight": Shard(f"{source}.weight", 1, index)}
    if linear.bias is not None:
        shards[f"{local}.bias"] = Shard(f"{source}.bias", 0, torch.arange(linear.out_features))
    return _columns(linear, index, group, sp), shards


def slot(total: int, tp: int, rank: int) -> Tensor:
    """Indices [rank * total/tp, (rank + 1) * total/tp): rank's even share of `total`."""
    width = total // tp
    return torch.arange(rank * width, (rank + 1) * width)


def column_region(module: nn.Module, group: Any, sp: bool) -> None:
    """Make `module`'s forward a column-parallel region (`column_linear`): f (or sp's
    all-gather) on its input, whose column-parallel linears share it. The forward becomes an
    instance attribute, so parameter names stay those of the whole model."""
    inner = module.forward

    def forward(x: Tensor) -> Tensor:
        return column_linear(inner, x, group, sp)  # (B, S, H) in, whole or sequence slice

    module.forward = forward


def shard_gpt(model: nn.Module, tp: int, rank: int, group: Any, sp: bool = False
              ) -> dict[str, Shard]:
    """Split every block of a dojo GPT `tp` ways in place; this process keeps slot `rank`.
    With a group the tied embedding/head is split by vocabulary rows too (`vocab_parallel`;
    the loss must then be its `vocab_parallel_loss`). With `sp` the blocks take and give
    sequence slices (`sequence_parallel`; the caller installs the position embedding's slice).
    tp = 1 with group None gives the same block structure without communication (used for
    recompute=selective).

    Returns the local parameter names that hold a slice of a whole-model parameter, with the
    slice; parameters not listed are whole copies under their original names.
    """
    shards: dict[str, Shard] = {}
    blocks: Any = model.blocks
    for i, block in enumerate(blocks):
        attn: Any = block.attn
        mlp: Any = block.mlp
        h = attn.qkv.in_features
        if attn.heads % tp or mlp[0].out_features % tp:
            raise DojoError(f"tp={tp} must divide heads={attn.heads} and "
                            f"ffn={mlp[0].out_features}")
        mine = slot(h, tp, rank)
        ffn_rows = slot(mlp[0].out_features, tp, rank)
        p = f"blocks.{i}"
        qkv, s1 = column_parallel(attn.qkv, torch.cat([mine, mine + h, mine + 2 * h]),
                                  f"{p}.attn.qkv", f"{p}.attn.qkv")
        proj, s2 = row_parallel(attn.proj, mine, group, sp, f"{p}.attn.proj", f"{p}.attn.proj")
        fc, s3 = column_parallel(mlp[0], ffn_rows, f"{p}.mlp.fc", f"{p}.mlp.0")
        down, s4 = row_parallel(mlp[2], ffn_rows, group, sp, f"{p}.mlp.proj", f"{p}.mlp.2")
        block.attn = ParallelAttention(qkv, proj, attn.heads // tp, attn.attention, attn.dropout,
                                       group, sp)
        block.mlp = ParallelMLP(fc, mlp[1], down, group, sp)
        shards.update({**s1, **s2, **s3, **s4})
    if group is not None:
        from dojo.runtime.vocab_parallel import split_vocab

        lo, hi = split_vocab(model, tp, rank, group, sp)
        shards["wte.weight"] = Shard("wte.weight", 0, torch.arange(lo, hi))
    return shards
