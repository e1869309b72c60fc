"""Mixture-of-experts decoders: Mixtral 8x7B and DeepSeek-V3, from their published configs.

One config describes both: a Llama-style decoder (RMSNorm, rotary, SwiGLU, untied head) whose
feed-forward is a `dojo.models.moe.MoE` layer in every block after the first `dense_layers`,
with grouped-query attention (`attention=gqa`, Mixtral) or multi-head latent attention
(`attention=mla`, DeepSeek-V3: queries through a rank-`q_lora_rank` bottleneck, keys and values
from one rank-`kv_lora_rank` latent, a `qk_rope_dim`-wide rotary key shared by all heads).

Presets (parameter counts in closed form in tests/models/test_models_moe.py):
- `mixtral-8x7b` (mistralai/Mixtral-8x7B-v0.1 config.json): 32 x 4096, 32 heads, 8 KV heads,
  8 experts of FFN 14336, top-2; 46,702,792,704 parameters (published 46.7B), 12.9B active.
- `deepseek-v3` (deepseek-ai/DeepSeek-V3 config.json, without the multi-token-prediction
  module): 61 x 7168, MLA with 128 heads, 3 dense layers of FFN 18432, then 1 shared + 256
  routed experts of FFN 2048, top-8 in 4 of 8 groups, sigmoid router with scale 2.5;
  671,026,404,352 parameters (published 671B), 37.6B activated per token (published 37B).

The dense layers sit in a ModuleDict, so the capture traces them in full (the compiler repeats
one block, the routed one) and they ride with the embedding on the first pipeline stage.
Not modelled: the routers' auxiliary balance losses (O(tokens x experts) FLOP) and the
updates of DeepSeek-V3's balancing bias (a rule outside the gradient; kept at 0), YaRN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dojo.config import check
from dojo.errors import ConfigError
from dojo.models.gpt import token_data
from dojo.models.llama import Attention, RMSNorm, apply_rotary, rotary_angles
from dojo.models.moe import ROUTERS, MoE, SwiGLU
from dojo.models.zoo import MODELS, ModelEntry, TrainConfig, classification_loss


@dataclass(frozen=True, kw_only=True)
class MoEConfig(TrainConfig):
    """Shape of an MoE decoder; defaults are Mixtral 8x7B. `ffn` is the dense layers' width,
    `expert_ffn` each expert's; `capacity` the dispatch capacity factor (1.0: buffers hold
    exactly the routed assignments of a balanced router)."""

    layers: int = field(default=32, metadata=check(ge=1))
    hidden: int = field(default=4096, metadata=check(ge=1))
    heads: int = field(default=32, metadata=check(ge=1))
    kv_heads: int = field(default=8, metadata=check(ge=1))
    ffn: int = field(default=14336, metadata=check(ge=1))
    expert_ffn: int = field(default=14336, metadata=check(ge=1))
    experts: int = field(default=8, metadata=check(ge=1))
    shared_experts: int = field(default=0, metadata=check(ge=0))
    top_k: int = field(default=2, metadata=check(ge=1))
    dense_layers: int = field(default=0, metadata=check(ge=0))
    capacity: float = field(default=1.0, metadata=check(gt=0))
    router: str = field(default="softmax", metadata=check(choices=ROUTERS))
    groups: int = field(default=1, metadata=check(ge=1))
    group_top_k: int = field(default=1, metadata=check(ge=1))
    route_scale: float = field(default=1.0, metadata=check(gt=0))
    attention: str = field(default="gqa", metadata=check(choices=("gqa", "mla")))
    q_lora_rank: int = field(default=0, metadata=check(ge=0))
    kv_lora_rank: int = field(default=512, metadata=check(ge=1))
    qk_nope_dim: int = field(default=128, metadata=check(ge=1))
    qk_rope_dim: int = field(default=64, metadata=check(ge=2))
    v_dim: int = field(default=128, metadata=check(ge=1))
    seq: int = field(default=32768, metadata=check(ge=1))
    vocab: int = field(default=32000, metadata=check(ge=2))
    rope_theta: float = field(default=1e6, metadata=check(gt=0))
    norm_eps: float = field(default=1e-5, metadata=check(gt=0))


def check_moe(cfg: Any, source: str) -> None:
    """Experts, groups and heads divide as the layers need; errors show the arithmetic."""
    if cfg.top_k > cfg.experts:
        raise ConfigError(source, "top_k", cfg.top_k, f"at most experts = {cfg.experts}")
    if cfg.dense_layers > cfg.layers:
        raise ConfigError(source, "dense_layers", cfg.dense_layers, f"at most layers = "
                          f"{cfg.layers}")
    if cfg.experts % cfg.groups:
        raise ConfigError(source, "groups", cfg.groups, f"a divisor of experts = {cfg.experts} "
                          f"({cfg.experts} / {cfg.groups} = {cfg.experts / cfg.groups:g})")
    if cfg.group_top_k > cfg.groups:
        raise ConfigError(source, "group_top_k", cfg.group_top_k, f"at most groups = "
                          f"{cfg.groups}")
    if cfg.groups > 1 and cfg.top_k > cfg.group_top_k * (cfg.experts // cfg.groups):
        raise ConfigError(source, "top_k", cfg.top_k, f"at most group_top_k x experts per group "
                          f"= {cfg.group_top_k} x {cfg.experts // cfg.groups}")
    if cfg.attention == "gqa":
        if cfg.hidden % cfg.heads or (cfg.hidden // cfg.heads) % 2:
            raise ConfigError(source, "heads", cfg.heads, f"a divisor of hidden={cfg.hidden} "
                              "giving an even head size")
        if cfg.heads % cfg.kv_heads:
            raise ConfigError(source, "kv_heads", cfg.kv_heads, f"a divisor of heads="
                              f"{cfg.heads}")
    elif cfg.qk_rope_dim % 2:
        raise ConfigError(source, "qk_rope_dim", cfg.qk_rope_dim, "an even number (rotary pairs)")


class LatentAttention(nn.Module):
    """DeepSeek's multi-head latent attention (MLA), causal, with the shapes of its config.

    Under tensor parallelism the down projections stay whole on every rank, as Megatron-Core
    builds linear_q_down_proj and linear_kv_down_proj (TELinear, parallel_mode "duplicated"),
    and the up projections split by heads (dojo.compiler.replicated). `rope_key` (an identity)
    marks the rotary key every head shares, where the runtime's split hooks its f; the
    sequence length is read after the up projections, which under sequence parallelism see the
    whole sequence while the input is a shard (dojo.runtime.tensor_parallel_moe)."""

    tp_replicated = ("q_a", "kv_a")

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.heads, self.theta = cfg.heads, cfg.rope_theta
        self.nope, self.rope, self.v_dim = cfg.qk_nope_dim, cfg.qk_rope_dim, cfg.v_dim
        self.kv_rank = cfg.kv_lora_rank
        qk = cfg.qk_nope_dim + cfg.qk_rope_dim
        if cfg.q_lora_rank:
            self.q_a = nn.Linear(cfg.hidden, cfg.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.norm_eps)
            self.q_b = nn.Linear(cfg.q_lora_rank, cfg.heads * qk, bias=False)
        else:
            self.wq = nn.Linear(cfg.hidden, cfg.heads * qk, bias=False)
        self.kv_a = nn.Linear(cfg.hidden, cfg.kv_lora_rank + cfg.qk_rope_dim, bias=False)
        self.kv_norm = RMSNorm(cfg.kv_lora_rank, cfg.norm_eps)
        self.kv_b = nn.Linear(cfg.kv_lora_rank, cfg.heads * (cfg.qk_nope_dim + cfg.v_dim),
                              bias=False)
        self.wo = nn.Linear(cfg.heads * cfg.v_dim, cfg.hidden, bias=False)
        self.rope_key = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        nh, nope, rope = self.heads, self.nope, self.rope
        q = self.q_b(self.q_norm(self.q_a(x))) if hasattr(self, "q_a") else self.wq(x)
        b, s, _ = q.shape
        q = q.view(b, s, nh, nope + rope).transpose(1, 2)  # (B, nh, S, nope+rope)
        q_nope, q_pe = q.split([nope, rope], dim=-1)
        latent, k_pe = self.kv_a(x).split([self.kv_rank, rope], dim=-1)  # (B,S,r), (B,S,rope)
        k_pe = self.rope_key(k_pe)  # (B, S, rope)
        kv = self.kv_b(self.kv_norm(latent)).view(b, s, nh, nope + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split([nope, self.v_dim], dim=-1)  # (B, nh, S, nope), (B, nh, S, v)
        angles = rotary_angles(s, rope, self.theta, x.device)
        q_pe = apply_rotary(q_pe, angles)  # (B, nh, S, rope)
        k_pe = apply_rotary(k_pe.unsqueeze(1), angles).expand(b, nh, s, rope)  # shared by heads
        q = torch.cat([q_nope, q_pe], dim=-1)  # (B, nh, S, nope+rope)
        k = torch.cat([k_nope, k_pe], dim=-1)  # (B, nh, S, nope+rope)
        # Values at their own width, not padded to the query/key width: Megatron-Core builds
        # the core attention with k_channels = nope + rope and v_channels = v_dim
        # (TransformerEngine's fused attention takes different head sizes) after making the
        # value contiguous. A CPU runs unequal widths through SDPA's math fallback; a GPU's
        # fused kernel is modelled as it runs (dojo.compiler.fusion.fuse_attention).
        v = v.contiguous()  # (B, nh, S, v)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, S, v)
        return self.wo(y.transpose(1, 2).reshape(b, s, nh * self.v_dim))  # (B, S, H)


class Block(nn.Module):
    """Pre-norm attention and feed-forward (dense SwiGLU, or the MoE layer when `moe`)."""

    def __init__(self, cfg: MoEConfig, moe: bool) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.attn: nn.Module = (LatentAttention(cfg) if cfg.attention == "mla" else
                                Attention(cfg.hidden, cfg.heads, cfg.kv_heads, cfg.rope_theta))
        self.ffn_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.ffn: nn.Module = SwiGLU(cfg.hidden, cfg.ffn)
        if moe:
            self.ffn = MoE(cfg.hidden, cfg.expert_ffn, cfg.experts, cfg.top_k,
                           shared=cfg.shared_experts, capacity=cfg.capacity, router=cfg.router,
                           groups=cfg.groups, group_top_k=cfg.group_top_k,
                           route_scale=cfg.route_scale)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class MoEDecoder(nn.Module):
    """Token ids (B, S) -> logits (B, S, vocab): dense blocks, then MoE blocks, untied head."""

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab, cfg.hidden)
        self.dense = nn.ModuleDict({str(i): Block(cfg, moe=False)
                                    for i in range(cfg.dense_layers)})
        self.blocks = nn.ModuleList(Block(cfg, moe=True)
                                    for _ in range(cfg.layers - cfg.dense_layers))
        self.norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.output = nn.Linear(cfg.hidden, cfg.vocab, bias=False)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)  # (B, S, H)
        for block in self.dense.values():
            x = block(x)
        for block in self.blocks:
            x = block(x)
        return self.output(self.norm(x))  # (B, S, V)


SMALL_MOE = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "ffn": 128, "expert_ffn": 64,
             "experts": 4, "seq": 64, "vocab": 512}
SMALL_DEEPSEEK = {"layers": 3, "hidden": 64, "heads": 4, "kv_heads": 4, "ffn": 128,
                  "expert_ffn": 32, "experts": 8, "top_k": 2, "groups": 4, "group_top_k": 2,
                  "q_lora_rank": 32, "kv_lora_rank": 16, "qk_nope_dim": 16, "qk_rope_dim": 8,
                  "v_dim": 16, "dense_layers": 1, "seq": 64, "vocab": 512}


def _register(name: str, summary: str, small: dict[str, Any], **preset: Any) -> None:
    MODELS.add(name, ModelEntry(
        config_cls=MoEConfig, make_model=MoEDecoder, make_data=token_data,
        loss_fn=classification_loss, preset=preset, small=small, sequence=True,
        summary=summary, validate=check_moe,
    ))


_register("moe", "generic MoE decoder: --set layers= hidden= experts= top_k= expert_ffn= ...",
          SMALL_MOE)
_register("mixtral-8x7b", "Mixtral 8x7B (32 x 4096, GQA 32/8 heads, 8 experts of ffn 14336, "
          "top-2)", SMALL_MOE)
_register("deepseek-v3", "DeepSeek-V3 (61 x 7168, MLA 128 heads, 3 dense + 58 MoE layers, "
          "1 shared + 256 experts of ffn 2048, top-8)", SMALL_DEEPSEEK,
          layers=61, hidden=7168, heads=128, kv_heads=128, ffn=18432, expert_ffn=2048,
          experts=256, shared_experts=1, top_k=8, dense_layers=3, router="sigmoid", groups=8,
          group_top_k=4, route_scale=2.5, attention="mla", q_lora_rank=1536, kv_lora_rank=512,
          qk_nope_dim=128, qk_rope_dim=64, v_dim=128, seq=4096, vocab=129280, rope_theta=10000.0,
          norm_eps=1e-6)
