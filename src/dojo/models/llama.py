"""Llama-style decoder: RMSNorm, rotary position embeddings, SwiGLU, grouped-query attention.

No biases, untied output head. Presets `llama3-8b`, `llama3-70b`, `llama3-405b` have the published
shapes (8.03B / 70.6B / 405.9B parameters); `llama` is the generic one. Rotary tables are computed
in `forward` from positions, so a model built on the meta device needs no buffers filled in later.
Attention is one `F.scaled_dot_product_attention(is_causal=True, enable_gqa=True)` call.
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
from dojo.models.zoo import MODELS, ModelEntry, TrainConfig, classification_loss


@dataclass(frozen=True, kw_only=True)
class LlamaConfig(TrainConfig):
    """Shape of a Llama-style decoder; defaults are Llama 3 8B. `seq` is the context (tokens)."""

    layers: int = field(default=32, metadata=check(ge=1))
    hidden: int = field(default=4096, metadata=check(ge=1))
    heads: int = field(default=32, metadata=check(ge=1))
    kv_heads: int = field(default=8, metadata=check(ge=1))
    ffn: int = field(default=14336, metadata=check(ge=1))
    seq: int = field(default=8192, metadata=check(ge=1))
    vocab: int = field(default=128256, metadata=check(ge=2))
    rope_theta: float = field(default=500000.0, metadata=check(gt=0))
    norm_eps: float = field(default=1e-5, metadata=check(gt=0))


def check_llama(cfg: Any, source: str) -> None:
    """Heads divide `hidden`, kv_heads divide heads, and the head size is even (for rotary)."""
    if cfg.hidden % cfg.heads:
        raise ConfigError(source, "heads", cfg.heads, f"a divisor of hidden={cfg.hidden}")
    if cfg.heads % cfg.kv_heads:
        raise ConfigError(source, "kv_heads", cfg.kv_heads, f"a divisor of heads={cfg.heads}")
    if (cfg.hidden // cfg.heads) % 2:
        raise ConfigError(source, "heads", cfg.heads,
                          f"a head size hidden/heads = {cfg.hidden // cfg.heads} that is even")


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight over the last dimension, computed in float32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rotary_angles(seq: int, head_dim: int, theta: float, device: torch.device) -> Tensor:
    """Angles (S, head_dim/2) in radians: position m times theta^(-2i/head_dim)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=device).float() / head_dim)
    return torch.outer(torch.arange(seq, device=device).float(), inv_freq)  # (S, hd/2)


def apply_rotary(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of `x` (B, nh, S, hd) by `angles` (S, hd/2),
    or of `x` (B, S, nh, hd) by `angles` (S, 1, hd/2): the result is contiguous in `x`'s shape.

    This is the pairing of Meta's reference code (complex multiplication by e^{i*angle}).
    """
    cos, sin = angles.cos(), angles.sin()  # (S, hd/2) or (S, 1, hd/2)
    xf = x.float().unflatten(-1, (-1, 2))  # (..., hd/2, 2)
    x1, x2 = xf[..., 0], xf[..., 1]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2).type_as(x)  # x's shape


class Attention(nn.Module):
    """Grouped-query causal attention: `heads` query heads share `kv_heads` key/value heads."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, theta: float) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.theta = heads, kv_heads, theta
        self.head_dim = hidden // heads
        self.wq = nn.Linear(hidden, heads * self.head_dim, bias=False)
        self.wk = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(heads * self.head_dim, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, s, _ = x.shape
        hd = self.head_dim
        # Rotated token-major, then transposed, as Meta's reference model.py does: q stays
        # (B, S, nh, hd) in memory, so a fused kernel (FlashAttention) writes its output
        # token-major too, and the output projection reads it without a copy.
        q = self.wq(x).view(b, s, self.heads, hd)  # (B, S, nh, hd)
        k = self.wk(x).view(b, s, self.kv_heads, hd)  # (B, S, nkv, hd)
        v = self.wv(x).view(b, s, self.kv_heads, hd)  # (B, S, nkv, hd)
        angles = rotary_angles(s, hd, self.theta, x.device).unsqueeze(1)  # (S, 1, hd/2)
        q, k = apply_rotary(q, angles), apply_rotary(k, angles)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2), is_causal=True,
                                           enable_gqa=True)  # (B, nh, S, hd)
        return self.wo(y.transpose(1, 2).reshape(b, s, self.heads * hd))  # (B, S, H)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(hidden, ffn, bias=False)
        self.w3 = nn.Linear(hidden, ffn, bias=False)
        self.w2 = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        # Both projections before the activation, as Megatron's one fc1 GEMM makes [gate, up]:
        # SiLU and the product then run as one kernel where the plan fuses (compiler.kernelsave)
        gate, up = self.w1(x), self.w3(x)  # (..., ffn) each
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.attn = Attention(cfg.hidden, cfg.heads, cfg.kv_heads, cfg.rope_theta)
        self.ffn_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.ffn = FeedForward(cfg.hidden, cfg.ffn)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class Llama(nn.Module):
    """Token ids (B, S) -> logits (B, S, vocab), with a separate (untied) output matrix."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab, cfg.hidden)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.output = nn.Linear(cfg.hidden, cfg.vocab, bias=False)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)  # (B, S, H)
        for block in self.blocks:
            x = block(x)
        return self.output(self.norm(x))  # (B, S, V)


SMALL_LLAMA = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "ffn": 160, "seq": 64,
               "vocab": 512}


def _register(name: str, summary: str, **preset: Any) -> None:
    MODELS.add(name, ModelEntry(
        config_cls=LlamaConfig, make_model=Llama, make_data=token_data,
        loss_fn=classification_loss, preset=preset, small=SMALL_LLAMA, sequence=True,
        summary=summary, validate=check_llama,
    ))


_register("llama", "generic Llama-style decoder: --set layers= hidden= heads= kv_heads= ffn= ...")
_register("llama3-8b", "Llama 3 8B (32 x 4096, 32 heads, 8 kv heads, ffn 14336)")
_register("llama3-70b", "Llama 3 70B (80 x 8192, 64 heads, 8 kv heads, ffn 28672)",
          layers=80, hidden=8192, heads=64, kv_heads=8, ffn=28672)
_register("llama3-405b", "Llama 3.1 405B (126 x 16384, 128 heads, 8 kv heads, ffn 53248)",
          layers=126, hidden=16384, heads=128, kv_heads=8, ffn=53248)
