"""Megatron sequence parallelism (plan sp=on) for the tensor-parallel GPT, Llama and MoE
decoders (their experts' buffers and MLA's latents: `tensor_parallel_moe`): the norm, dropout
and residual regions hold a slice of the sequence on each tp rank.

Activations between the tp regions are (B, S/tp, H): rank r holds tokens [r*S/tp, (r+1)*S/tp).
The four autograd functions, each the other's adjoint (Korthikanti et al., 2022, section 4.2.2):
- `gather_seq`: all-gather along the sequence before a column-parallel linear (qkv, mlp.fc);
  backward reduce-scatters the gradient (every rank's partial input gradient, summed and sliced).
  The linear keeps only the slice for backward and gathers it again there (`keep_shard`).
- `reduce_scatter_seq`: after a row-parallel linear (attn.proj, mlp.proj) the partial products
  are summed and sliced in one reduce-scatter; backward all-gathers the gradient.
At the model's ends (`dojo.runtime.vocab_parallel`): the vocabulary-parallel embedding's
partial sums are reduce-scattered onto this rank's slice (backward all-gather), the position
embedding (replicated) is sliced without communication, and the split head's input is
all-gathered after the final LayerNorm (`gather_seq`; backward reduce-scatter).
These replace the tp all-reduces (all-reduce = reduce-scatter + all-gather, same bytes), so sp
costs no extra communication and divides LayerNorm/dropout work and activations by tp.

Parameters used inside the sharded region (every LayerNorm, the row-parallel biases and the
position embedding) see only this rank's tokens: their gradients are partial sums over the tp
group (`partial_grad_names`), summed once per step.
Sequence is dim -2 everywhere ((B, S, H) activations, (S, H) position embeddings).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from dojo.errors import DojoError


def _gather(x: Tensor, group: Any) -> Tensor:
    """All-gather along dim -2: (..., S/tp, H) -> (..., S, H), rank order."""
    import torch.distributed as dist

    tp = dist.get_world_size(group)
    local = x.movedim(-2, 0).contiguous()  # (S/tp, ..., H)
    out = torch.empty((local.shape[0] * tp, *local.shape[1:]), dtype=x.dtype)  # (S, ..., H)
    dist.all_gather_single(out, local, group=group)
    return out.movedim(0, -2)


def _reduce_scatter(x: Tensor, group: Any) -> Tensor:
    """Sum over the group, keep this rank's sequence slice: (..., S, H) -> (..., S/tp, H)."""
    import torch.distributed as dist

    tp = dist.get_world_size(group)
    whole = x.movedim(-2, 0).contiguous()  # (S, ..., H)
    out = torch.empty((whole.shape[0] // tp, *whole.shape[1:]), dtype=x.dtype)  # (S/tp, ..., H)
    dist.reduce_scatter_single(out, whole, group=group)
    return out.movedim(0, -2)


def _slice(x: Tensor, group: Any) -> Tensor:
    import torch.distributed as dist

    tp, rank = dist.get_world_size(group), dist.get_rank(group)
    n = x.shape[-2] // tp
    return x.narrow(-2, rank * n, n).contiguous()  # (..., S/tp, H)


class _SeqCollective(torch.autograd.Function):
    """One sequence collective forward (`fwd`), its adjoint backward (`bwd`)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any, fwd: Any, bwd: Any) -> Tensor:
        ctx.group, ctx.bwd = group, bwd
        out: Tensor = fwd(x, group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        return ctx.bwd(grad, ctx.group), None, None, None


def gather_seq(x: Tensor, group: Any) -> Tensor:
    """(B, S/tp, H) -> (B, S, H); backward reduce-scatter."""
    out: Tensor = _SeqCollective.apply(x, group, _gather, _reduce_scatter)
    return out


@contextmanager
def keep_shard(held: list[Tensor], group: Any) -> Iterator[None]:
    """Within it, a tensor autograd saves that is one of `held` (the all-gathered inputs of
    column-parallel linears, or a view of one's storage) is kept as this rank's sequence slice
    and all-gathered again when backward unpacks it, for the weight gradient: Megatron-LM's
    LinearWithGradAccumulationAndAsyncCommunication (the memory the simulator counts, and the
    backward all-gather its program issues). Other saved tensors are kept as they are. `held`
    may be filled after entering (the head's input, gathered by a hook inside the forward).
    Saves of one held tensor by several linears share one slice and one gather."""
    kept: dict[int, list[Any]] = {}  # per held tensor: [slice, gathered or None, saves left]

    def pack(t: Tensor) -> Any:
        for whole in held:
            if t.data_ptr() == whole.data_ptr() and t.numel() == whole.numel():
                entry = kept.setdefault(whole.data_ptr(),
                                        [_slice(whole.detach(), group), None, 0])
                entry[2] += 1  # several linears saving one input (llama's wq/wk/wv) share it
                return entry, tuple(t.shape)  # (B, S/tp, H) kept, the view saved
        return t

    def unpack(saved: Any) -> Tensor:
        if isinstance(saved, Tensor):
            return saved
        entry, shape = saved
        if entry[1] is None:
            entry[1] = _gather(entry[0], group).contiguous()  # (B, S, H), once per input
        out: Tensor = entry[1].view(shape)
        entry[2] -= 1
        if entry[2] <= 0:
            entry[1] = None  # the last save that needs it: free the gathered copy
        return out

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield


def reduce_scatter_seq(x: Tensor, group: Any) -> Tensor:
    """Partial (B, S, H) -> summed (B, S/tp, H); backward all-gather."""
    out: Tensor = _SeqCollective.apply(x, group, _reduce_scatter, _gather)
    return out


def install(model: nn.Module, tp: int, seq: int, group: Any) -> None:
    """Shard the sequence of a tp-split dojo GPT or Llama at its input: keep this rank's slice
    of gpt's position embedding (a forward hook, so the whole-model forward and the pipeline
    chunks both get it; llama has none, its rotary positions act after the all-gather); the
    token embedding reduce-scatters itself and the head gathers, see `vocab_parallel`.
    DojoError when `seq` does not split into tp slices."""
    if seq % tp:
        raise DojoError(f"sequence parallelism (sp=on) splits the sequence over tp={tp}: "
                        f"seq {seq} is not divisible ({seq} / {tp} = {seq / tp:g})")
    m: Any = model

    def keep_slice(_module: nn.Module, _inputs: Any, out: Tensor) -> Tensor:
        # Replicated (S, H) -> own (S/tp, H); its gradient is partial, summed once per step.
        return _slice(out, group)

    if hasattr(m, "wpe"):  # gpt; llama's rotary positions act after the all-gather
        m.wpe.register_forward_hook(keep_slice)  # (S, H) -> (S/tp, H)


def partial_grad_names(model: nn.Module) -> set[str]:
    """Parameters whose gradient is a partial sum over the tp group under sp: LayerNorms and
    RMSNorms, the position embedding (sliced), the row-parallel biases (added after the
    reduce-scatter) and the linears a module keeps whole over tp (`tp_replicated`: the MoE
    router), all on this rank's tokens only. The vocabulary-parallel `wte` is no nn.Embedding."""
    from dojo.models.llama import RMSNorm
    from dojo.runtime.tensor_parallel import RowParallelLinear

    names: set[str] = set()
    for path, module in model.named_modules():
        prefix = f"{path}." if path else ""
        for child in getattr(module, "tp_replicated", ()):  # whole linears on the shard (router)
            whole = getattr(module, child, None)
            if isinstance(whole, nn.Module):
                names.update(f"{prefix}{child}.{n}" for n, _ in whole.named_parameters())
        if isinstance(module, nn.LayerNorm | RMSNorm | nn.Embedding):  # norms, positions
            names.update(f"{prefix}{n}" for n, _ in module.named_parameters(recurse=False))
        elif isinstance(module, RowParallelLinear) and module.bias is not None:
            names.add(f"{prefix}bias")
    return names
