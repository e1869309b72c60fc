"""Megatron-LM's vocabulary-parallel embedding, LM head and cross entropy for the tp-split GPT
and Llama (whose untied output layer is column-parallel over the same vocabulary rows).

The tied token embedding `wte` (V, H) is split by rows: tp rank r holds vocabulary ids
[lo, hi) = [r*V//tp, (r+1)*V//tp) (an uneven V splits as evenly as it can, no padding rows).
- Embedding: a token outside [lo, hi) looks up row 0 and is zeroed, so each rank holds a partial
  sum of the embedding; one all-reduce (Megatron's g; under sequence parallelism a
  reduce-scatter onto this rank's sequence slice) makes it whole. Backward needs nothing: the
  all-reduce's adjoint is the identity and each rank's rows get exactly their tokens' gradient.
- Head: logits = f(ln_f(x)) @ W_local^T, the logits of this rank's vocabulary slice, (B, S, V/tp);
  f is identity forward and all-reduces the input gradient backward (under sp an all-gather of
  the sequence, reduce-scatter backward), installed as a hook on ln_f.
- Cross entropy over the split logits z (per token, target t), in two all-reduces:
  m = all_reduce_max(max_v z_v); then one all-reduce (sum) of [z_t - m, sum_v exp(z_v - m)]
  concatenated (Megatron-core's fused vocab-parallel cross entropy, which batches these two
  sums into one call); loss = log(sum exp) - (z_t - m). Backward is local:
  dL/dz_v = (softmax_v - [v == t]) * dL/dloss, with softmax_v = exp(z_v - m) / sum exp.
The weight's gradient (embedding rows plus head rows) is complete on each rank for its rows, so
the tied weight needs no tp reduction. Targets are class ids in [0, V) (no ignore index).
Llama: `embed` is split the same way; its untied `output` (V, H) keeps the same rows [lo, hi)
(Megatron's column-parallel output layer, `tensor_parallel_models`), f hooks its final `norm`;
each of the two weights' row gradients is complete on its rank.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dojo.errors import DojoError


def vocab_rows(vocab: int, tp: int, rank: int) -> tuple[int, int]:
    """[lo, hi): the vocabulary ids tp rank `rank` of `tp` holds."""
    return rank * vocab // tp, (rank + 1) * vocab // tp


class VocabParallelEmbedding(nn.Module):
    """Rows [lo, hi) of a (V, H) embedding; forward sums the ranks' partial lookups (see the
    module docstring). `weight` keeps nn.Embedding's name, so the tied head reads it too."""

    def __init__(self, table: nn.Embedding, lo: int, hi: int, group: Any, sp: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(table.weight.detach()[lo:hi].clone())  # (V/tp, H)
        self.lo, self.hi = lo, hi
        self.group, self.sp = group, sp

    def forward(self, tokens: Tensor) -> Tensor:
        from dojo.runtime.tensor_parallel import exit_tp

        outside = (tokens < self.lo) | (tokens >= self.hi)  # (B, S)
        local = (tokens - self.lo).masked_fill(outside, 0)
        part = F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return exit_tp(part, self.group, self.sp)  # (B, S, H), or (B, S/tp, H) under sp


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-token cross entropy of logits split over the vocabulary (module docstring)."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, target: Tensor, lo: int, group: Any) -> Tensor:
        import torch.distributed as dist

        z = logits.float()  # (N, V/tp)
        top = z.max(dim=-1).values  # (N,)
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
        z = z - top.unsqueeze(-1)
        inside = (target >= lo) & (target < lo + z.shape[-1])  # (N,)
        index = (target - lo).masked_fill(~inside, 0)
        picked = z.gather(-1, index.unsqueeze(-1)).squeeze(-1) * inside  # (N,)
        exp = z.exp()  # (N, V/tp)
        sums = torch.cat([picked, exp.sum(dim=-1)])  # (2N,)
        dist.all_reduce(sums, group=group)
        picked, total = sums.chunk(2)
        ctx.save_for_backward(exp / total.unsqueeze(-1), index, inside)
        ctx.dtype = logits.dtype
        return total.log() - picked  # (N,)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        softmax, index, inside = ctx.saved_tensors
        out = softmax.clone()  # (N, V/tp)
        out.scatter_add_(-1, index.unsqueeze(-1), -inside.to(out.dtype).unsqueeze(-1))
        return (out * grad.unsqueeze(-1)).to(ctx.dtype), None, None, None


def vocab_parallel_loss(lo: int, group: Any) -> Any:
    """The mean cross entropy of split logits (..., V/tp) against class ids (...): the
    classification loss of a vocabulary-parallel head (`dojo.models.zoo.classification_loss`)."""

    def loss(logits: Tensor, target: Tensor) -> Tensor:
        flat = logits.reshape(-1, logits.shape[-1])  # (N, V/tp)
        out: Tensor = _VocabParallelCrossEntropy.apply(flat, target.reshape(-1), lo, group)
        return out.mean()

    return loss


def split_vocab(model: Any, tp: int, rank: int, group: Any, sp: bool, *,
                embedding: str = "wte", final_norm: str = "ln_f") -> tuple[int, int]:
    """Replace the model's token embedding (attribute `embedding`: a dojo GPT's tied `wte`,
    Llama's `embed`) by this rank's `VocabParallelEmbedding` and put f on the head's input (a
    hook on the final norm `final_norm`); returns the rows [lo, hi). An untied head is the
    caller's to split (column-parallel, the same rows). DojoError when the vocabulary has fewer
    ids than tp ranks."""
    from dojo.runtime.tensor_parallel import enter_tp

    table = getattr(model, embedding)
    vocab = table.num_embeddings
    if vocab < tp:
        raise DojoError(f"tp={tp} splits the vocabulary by rows: vocab={vocab} has fewer ids "
                        "than tp ranks")
    lo, hi = vocab_rows(vocab, tp, rank)
    setattr(model, embedding, VocabParallelEmbedding(table, lo, hi, group, sp))

    held: list[Tensor] = []  # under sp, the head's gathered input: saved as a slice

    def head_input(_module: nn.Module, _inputs: Any, out: Tensor) -> Tensor:
        whole = enter_tp(out, group, sp)  # (B, S, H) whole for the split head
        if sp:
            whole = whole.contiguous()  # the head saves a view of it (`head_context`)
            held[:] = [whole]
        return whole

    getattr(model, final_norm).register_forward_hook(head_input)
    if sp:
        model.head_gathered = (held, group)
        whole_forward = model.forward

        def forward(*args: Any, **kwargs: Any) -> Tensor:
            with head_context(model):
                out: Tensor = whole_forward(*args, **kwargs)
            return out

        model.forward = forward
    return lo, hi


def head_context(model: Any) -> Any:
    """The context the tied head's matmul runs in: under sp its gathered input is kept as this
    rank's slice and gathered again in backward (`sequence_parallel.keep_shard`), as Megatron's
    output layer (a ColumnParallelLinear) does; otherwise nothing."""
    from contextlib import nullcontext

    from dojo.runtime.sequence_parallel import keep_shard

    held = getattr(model, "head_gathered", None)
    return nullcontext() if held is None else keep_shard(*held)
