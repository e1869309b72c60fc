"""Megatron tensor parallelism per model family: `shard_model` picks the split of a dojo model.

The splits share `tensor_parallel`'s pieces: `column_parallel` / `row_parallel` (the weight
slices and their `Shard`s), f and g (`enter_tp` / `exit_tp`, or sp's all-gather and
reduce-scatter) and the vocabulary-parallel embedding, head and loss (`vocab_parallel`).

- gpt family: `tensor_parallel.shard_gpt` (fused qkv, GELU MLP, tied head).
- Llama (`shard_llama`), per block, tp rank r of tp:
  - attn.wq, attn.wk, attn.wv: column-parallel; rank r keeps query heads
    [r*heads/tp, (r+1)*heads/tp) and key/value heads [r*kv/tp, (r+1)*kv/tp). Grouped-query
    attention maps query head j to kv head j // (heads/kv), so with kv % tp == 0 a rank's
    query heads use exactly its kv heads; RoPE acts per head and needs no change.
  - attn.wo: row-parallel (the input columns of the rank's query heads).
  - ffn.w1 (gate), ffn.w3 (up): column-parallel over the same ffn rows (two GEMMs, as the
    model has them); ffn.w2 (down): row-parallel.
  f sits on each of attn's and ffn's input (`column_region`; under sp the gathered input the
  three or two linears save is kept as one slice, gathered again once in backward), g in the
  row-parallel outputs: 2 all-reduces per block forward and 2 backward, as in gpt. The token
  embedding `embed` is vocabulary-parallel, and the untied head `output` column-parallel over
  the same vocabulary rows with f on the final norm's output and the vocabulary-parallel cross
  entropy (Megatron's `ColumnParallelLinear` output layer with `gather_output=False`). The
  RMSNorm weights stay replicated; under sp they see a sequence slice (`sequence_parallel`).
- The MoE decoders (moe, mixtral-8x7b, deepseek-v3): `tensor_parallel_moe.shard_moe_decoder`
  (attention and dense layers as Llama's, the router whole, each expert column/row-parallel).
- ViT (`shard_vit`), per encoder block: qkv column-parallel (the q, k and v rows of the rank's
  heads), proj row-parallel, mlp.0 column-parallel, mlp.2 row-parallel; f on qkv's and mlp's
  inputs (after the LayerNorms). The patch embedding, class token, positions, final LayerNorm
  and classification head stay whole and replicated, as Megatron's ViT keeps them: their
  inputs and output gradients are identical on every tp rank, so are their gradients (no tp
  reduction). No sp: the class token is read from position 0 alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dojo.errors import DojoError
from dojo.runtime.tensor_parallel import (
    Shard,
    column_parallel,
    column_region,
    row_parallel,
    shard_gpt,
    slot,
)


def shard_model(model: nn.Module, tp: int, rank: int, group: Any, sp: bool = False
                ) -> dict[str, Shard]:
    """Split `model` `tp` ways in place (this process keeps slot `rank`) by its family's split
    (module docstring); returns the local names that hold slices (`shard_gpt`'s contract).
    DojoError naming the class for a model without one."""
    from dojo.models.gpt import GPT
    from dojo.models.llama import Llama
    from dojo.models.moelm import MoEDecoder
    from dojo.models.vit import ViT
    from dojo.runtime.tensor_parallel_moe import shard_moe_decoder

    if isinstance(model, GPT):
        return shard_gpt(model, tp, rank, group, sp)
    if isinstance(model, Llama):
        return shard_llama(model, tp, rank, group, sp)
    if isinstance(model, ViT):
        return shard_vit(model, tp, rank, group, sp)
    if isinstance(model, MoEDecoder):
        return shard_moe_decoder(model, tp, rank, group, sp)
    raise DojoError(f"tensor parallelism (tp={tp}) supports the gpt, llama, vit and MoE decoder "
                    f"models; got {type(model).__name__} (use dp and, for gpt, llama or the "
                    "MoE decoders, pp)")


def check_divides(model: str, fields: tuple[tuple[str, int], ...], tp: int) -> None:
    """One-line refusal naming the first field that tp does not divide, with the arithmetic."""
    for field, value in fields:
        if value % tp:
            raise DojoError(f"tensor parallelism tp={tp} splits {model}'s {field} over the tp "
                            f"ranks: {field}={value} is not divisible by tp={tp} "
                            f"({value} / {tp} = {value / tp:g})")


def split_gqa(attn: Any, p: str, tp: int, rank: int, group: Any, sp: bool,
              shards: dict[str, Shard]) -> None:
    """Llama's grouped-query attention `attn` (whole-model prefix `p`) split in place: wq, wk,
    wv column-parallel over this rank's query and kv heads, wo row-parallel, f on the input."""
    q_rows = slot(attn.heads * attn.head_dim, tp, rank)  # this rank's query heads
    kv_rows = slot(attn.kv_heads * attn.head_dim, tp, rank)  # and their kv heads
    _columns(attn, (("wq", q_rows), ("wk", kv_rows), ("wv", kv_rows)), p, shards)
    attn.wo, s = row_parallel(attn.wo, q_rows, group, sp, f"{p}.wo", f"{p}.wo")
    shards.update(s)
    attn.heads, attn.kv_heads = attn.heads // tp, attn.kv_heads // tp
    column_region(attn, group, sp)


def split_swiglu(ffn: Any, p: str, tp: int, rank: int, group: Any, sp: bool,
                 shards: dict[str, Shard]) -> None:
    """A SwiGLU `ffn` (w1 gate, w3 up, w2 down; prefix `p`) split in place: w1 and w3
    column-parallel over the same ffn rows, w2 row-parallel, f on the input."""
    rows = slot(ffn.w1.out_features, tp, rank)
    _columns(ffn, (("w1", rows), ("w3", rows)), p, shards)
    ffn.w2, s = row_parallel(ffn.w2, rows, group, sp, f"{p}.w2", f"{p}.w2")
    shards.update(s)
    column_region(ffn, group, sp)


def split_untied_vocab(model: Any, tp: int, rank: int, group: Any, sp: bool,
                       shards: dict[str, Shard]) -> None:
    """Llama-style ends: the token embedding `embed` vocabulary-parallel, the untied head
    `output` column-parallel over the same rows, f on the final `norm` (`vocab_parallel`)."""
    from dojo.runtime.vocab_parallel import split_vocab

    lo, hi = split_vocab(model, tp, rank, group, sp, embedding="embed", final_norm="norm")
    rows = torch.arange(lo, hi)
    model.output, s = column_parallel(model.output, rows, "output", "output")
    shards.update(s)
    shards["embed.weight"] = Shard("embed.weight", 0, rows)


def shard_llama(model: nn.Module, tp: int, rank: int, group: Any, sp: bool = False
                ) -> dict[str, Shard]:
    """Split every block of a dojo Llama and its embedding/head (module docstring)."""
    shards: dict[str, Shard] = {}
    blocks: Any = model.blocks
    for i, block in enumerate(blocks):
        attn, ffn = block.attn, block.ffn
        check_divides("llama", (("kv_heads", attn.kv_heads), ("heads", attn.heads),
                                ("ffn", ffn.w1.out_features)), tp)
        split_gqa(attn, f"blocks.{i}.attn", tp, rank, group, sp, shards)
        split_swiglu(ffn, f"blocks.{i}.ffn", tp, rank, group, sp, shards)
    if group is not None:
        split_untied_vocab(model, tp, rank, group, sp, shards)
    return shards


def shard_vit(model: nn.Module, tp: int, rank: int, group: Any, sp: bool = False
              ) -> dict[str, Shard]:
    """Split every encoder block of a dojo ViT (module docstring); the rest stays whole."""
    if sp:
        raise DojoError(f"sequence parallelism (sp=on) with tp={tp} supports the gpt, llama "
                        "and MoE decoder models; vit reads its class token from one position "
                        "(use sp=off)")
    shards: dict[str, Shard] = {}
    blocks: Any = model.blocks
    for i, block in enumerate(blocks):
        h, ffn = block.proj.out_features, block.mlp[0].out_features
        check_divides("vit", (("heads", block.heads), ("ffn", ffn)), tp)
        p = f"blocks.{i}"
        mine, ffn_rows = slot(h, tp, rank), slot(ffn, tp, rank)
        block.qkv, s1 = column_parallel(block.qkv, torch.cat([mine, mine + h, mine + 2 * h]),
                                        f"{p}.qkv", f"{p}.qkv")
        block.proj, s2 = row_parallel(block.proj, mine, group, sp, f"{p}.proj", f"{p}.proj")
        block.mlp[0], s3 = column_parallel(block.mlp[0], ffn_rows, f"{p}.mlp.0", f"{p}.mlp.0")
        block.mlp[2], s4 = row_parallel(block.mlp[2], ffn_rows, group, sp, f"{p}.mlp.2",
                                        f"{p}.mlp.2")
        block.heads //= tp
        column_region(block.qkv, group, sp)
        column_region(block.mlp, group, sp)
        shards.update({**s1, **s2, **s3, **s4})
    return shards


def _columns(module: Any, names_rows: tuple[tuple[str, Any], ...], prefix: str,
             shards: dict[str, Shard]) -> None:
    """Make each named linear of `module` column-parallel over its `rows` (this rank's slice),
    recording its shards under `prefix.name`."""
    for name, rows in names_rows:
        linear, s = column_parallel(getattr(module, name), rows, f"{prefix}.{name}",
                                    f"{prefix}.{name}")
        setattr(module, name, linear)
        shards.update(s)
