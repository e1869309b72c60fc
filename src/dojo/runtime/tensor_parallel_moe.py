"""Megatron-Core tensor parallelism for the MoE decoders (`dojo.models.moelm`), without expert
parallelism: the experts split over tp (expert tensor parallelism etp = tp, Megatron-Core's
default), everything else as the dense models split it.

Per block, tp rank r of tp:
- grouped-query attention (moe, mixtral-8x7b) and the dense and shared-expert SwiGLUs: as
  Llama's (`tensor_parallel_models.split_gqa`, `split_swiglu`).
- multi-head latent attention (deepseek-v3): the down projections q_a and kv_a and their
  RMSNorms stay whole on every rank (Megatron-Core's "duplicated" linear_q_down_proj and
  linear_kv_down_proj; `dojo.compiler.replicated`); the up projections q_b (or wq) and kv_b are
  column-parallel over the rank's heads, each with f on its input (the latent); wo
  row-parallel; the rotary key, shared by all heads, gets f too (a hook on the model's
  `rope_key`: its gradient sums every rank's heads, Megatron-Core's reduction of k_pos_emb's
  gradient). Forward all-reduces wo's output only, backward the two latents' and the rotary
  key's gradients.
- the router (`gate`) stays whole on every rank and scores the rank's tokens on the whole hidden
  state (Megatron-Core's TopKRouter weight has no tp split), so every rank routes identically;
- the routed experts (`Experts`, weights stacked expert-first) split as an MLP each: w1 and w3
  keep ffn columns [r*F/tp, (r+1)*F/tp) of every expert, w2 the same rows. The dispatched buffer
  (E, C, H) enters with f and the experts' output leaves with g (an all-reduce of (E, C, H)),
  before the combine weighs it by the routing weights, so those weights' gradient is whole:
  Megatron-Core's tp collectives on the permuted tokens (its alltoall dispatcher's gather and
  reduce-scatter over tp).
The embedding and untied head are vocabulary-parallel (`split_untied_vocab`).

Sequence parallelism (sp=on): each rank routes and dispatches its own sequence shard into a
buffer (E, C/tp, H) with the capacity taken on its own tokens (as Megatron-Core's dispatchers
compute it per rank), all-gathers the buffers into (E, C, H) before the experts and
reduce-scatters their output back: the same as the whole model when no token is dropped
(capacity >= experts / top_k), else tokens are dropped per shard. MLA runs its down projections
and norms on the shard and all-gathers the two latents and the rotary key (Megatron-Core's
MLASelfAttention). The router's and the down projections' gradients are then partial sums over
tp (`sequence_parallel.partial_grad_names`), summed once per step with the norms'.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dojo.runtime.tensor_parallel import (
    Shard,
    column_linear,
    column_parallel,
    column_region,
    enter_tp,
    exit_tp,
    row_parallel,
    slot,
)
from dojo.runtime.tensor_parallel_models import (
    check_divides,
    split_gqa,
    split_swiglu,
    split_untied_vocab,
)


def shard_moe_decoder(model: nn.Module, tp: int, rank: int, group: Any, sp: bool = False
                      ) -> dict[str, Shard]:
    """Split a dojo MoEDecoder's dense and MoE blocks and its embedding/head `tp` ways in
    place, this process keeping slot `rank` (module docstring; `shard_gpt`'s contract)."""
    from dojo.models.moe import MoE
    from dojo.models.moelm import LatentAttention

    m: Any = model
    named = [(f"dense.{k}", b) for k, b in m.dense.items()]
    named += [(f"blocks.{i}", b) for i, b in enumerate(m.blocks)]
    shards: dict[str, Shard] = {}
    for p, block in named:
        attn, ffn = block.attn, block.ffn
        if isinstance(attn, LatentAttention):
            split_mla(attn, f"{p}.attn", tp, rank, group, sp, shards)
        else:
            check_divides("the moe decoder", (("kv_heads", attn.kv_heads),
                                              ("heads", attn.heads)), tp)
            split_gqa(attn, f"{p}.attn", tp, rank, group, sp, shards)
        if isinstance(ffn, MoE):
            split_moe(ffn, f"{p}.ffn", tp, rank, group, sp, shards)
        else:
            check_divides("the moe decoder", (("ffn", ffn.w1.out_features),), tp)
            split_swiglu(ffn, f"{p}.ffn", tp, rank, group, sp, shards)
    if group is not None:
        split_untied_vocab(model, tp, rank, group, sp, shards)
    return shards


def split_moe(moe: Any, p: str, tp: int, rank: int, group: Any, sp: bool,
              shards: dict[str, Shard]) -> None:
    """An MoE layer (prefix `p`) split in place: the router whole, every routed expert's FFN
    column/row-parallel over the same ffn slice with f and g around the dispatched buffer, the
    shared experts as a SwiGLU (module docstring)."""
    experts = moe.experts
    width = experts.w1.shape[-1]
    check_divides("the moe decoder", (("expert_ffn", width),), tp)
    rows = slot(width, tp, rank)
    with torch.no_grad():  # (E, H, F) -> (E, H, F/tp); (E, F, H) -> (E, F/tp, H)
        experts.w1 = nn.Parameter(experts.w1[:, :, rows].clone())
        experts.w3 = nn.Parameter(experts.w3[:, :, rows].clone())
        experts.w2 = nn.Parameter(experts.w2[:, rows, :].clone())
    for name, dim in (("w1", 2), ("w3", 2), ("w2", 1)):
        shards[f"{p}.experts.{name}"] = Shard(f"{p}.experts.{name}", dim, rows)
    inner = experts.forward

    def forward(x: Tensor) -> Tensor:
        # (E, C, H) whole, or under sp this rank's (E, C/tp, H): gathered along the rows
        partial = column_linear(inner, x, group, sp)  # (E, C, H), a partial sum over tp
        return exit_tp(partial, group, sp)  # (E, C, H), or (E, C/tp, H) under sp

    experts.forward = forward
    if moe.shared is not None:
        check_divides("the moe decoder", (("shared ffn", moe.shared.w1.out_features),), tp)
        split_swiglu(moe.shared, f"{p}.shared", tp, rank, group, sp, shards)


def split_mla(attn: Any, p: str, tp: int, rank: int, group: Any, sp: bool,
              shards: dict[str, Shard]) -> None:
    """Multi-head latent attention (prefix `p`) split in place by heads (module docstring);
    the down projections and their norms stay whole."""
    check_divides("deepseek-v3", (("heads", attn.heads),), tp)
    qk = attn.nope + attn.rope
    q_name = "q_b" if hasattr(attn, "q_a") else "wq"
    for name, width in ((q_name, qk), ("kv_b", attn.nope + attn.v_dim)):
        linear, s = column_parallel(getattr(attn, name), slot(attn.heads * width, tp, rank),
                                    f"{p}.{name}", f"{p}.{name}")
        setattr(attn, name, linear)
        shards.update(s)
        column_region(linear, group, sp)  # f, or sp's all-gather, on the latent (or x)
    attn.wo, s = row_parallel(attn.wo, slot(attn.heads * attn.v_dim, tp, rank), group, sp,
                              f"{p}.wo", f"{p}.wo")
    shards.update(s)
    attn.heads //= tp

    def rope_key(_module: nn.Module, _inputs: Any, k_pe: Tensor) -> Tensor:
        return enter_tp(k_pe, group, sp)  # (B, S, rope): whole, its gradient summed over tp

    attn.rope_key.register_forward_hook(rope_key)
