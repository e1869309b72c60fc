"""GPT-2-style decoder: learned positions, pre-LayerNorm, GELU (tanh), tied input/output embedding.

Presets: `gpt2-small` (124,439,808 parameters), `gpt2-medium` (354,823,168), `gpt3-175b`, and the
generic `gpt` whose shape comes entirely from `--set layers=... hidden=...`. Attention is one call
to `F.scaled_dot_product_attention(is_causal=True)` so a graph capture sees a single attention op.
Inputs: token ids (B, S) int64; output: logits (B, S, vocab); target: next-token ids (B, S).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dojo.config import check
from dojo.errors import ConfigError
from dojo.models.zoo import MODELS, ModelEntry, TrainConfig, classification_loss, randint


@dataclass(frozen=True, kw_only=True)
class GPTConfig(TrainConfig):
    """Shape of a GPT-2-style decoder; defaults are GPT-2 small. `seq` is the context (tokens)."""

    layers: int = field(default=12, metadata=check(ge=1))
    hidden: int = field(default=768, metadata=check(ge=1))
    heads: int = field(default=12, metadata=check(ge=1))
    ffn: int = field(default=3072, metadata=check(ge=1))
    seq: int = field(default=1024, metadata=check(ge=1))
    vocab: int = field(default=50257, metadata=check(ge=2))
    # "flash": one fused attention op (FlashAttention, SDPA); "math": the unfused
    # QK^T -> scale+mask -> softmax -> dropout -> @V chain Megatron-LM ran in 2021-22.
    attention: str = field(default="flash", metadata=check(choices=("flash", "math")))
    dropout: float = field(default=0.0, metadata=check(ge=0, le=1))


def check_heads(cfg: Any, source: str) -> None:
    """`hidden` must split evenly over `heads` (ConfigError otherwise)."""
    if cfg.hidden % cfg.heads:
        raise ConfigError(
            source, "heads", cfg.heads, f"a divisor of hidden={cfg.hidden} "
            f"({cfg.hidden} % {cfg.heads} = {cfg.hidden % cfg.heads})"
        )


class CausalSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, attention: str = "flash",
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.attention = attention
        self.dropout = dropout
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        b, s, h = x.shape
        q, k, v = self.qkv(x).split(h, dim=2)  # 3 x (B, S, H)
        q, k, v = (t.view(b, s, self.heads, h // self.heads).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = causal_attention(q, k, v, p, self.attention)  # (B, nh, S, hd)
        return self.proj(y.transpose(1, 2).reshape(b, s, h))  # (B, S, H)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, p: float, attention: str) -> Tensor:
    """Causal attention over (B, nh, S, hd) heads, "flash" (one fused op) or "math" (unfused)."""
    if attention == "flash":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
    return _math_attention(q, k, v, p)


def _math_attention(q: Tensor, k: Tensor, v: Tensor, p: float) -> Tensor:
    """The unfused causal attention: every (S, S) intermediate is materialised."""
    s = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, nh, S, S)
    mask = torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1)  # (S, S)
    probs = F.dropout(scores.masked_fill(mask, float("-inf")).softmax(-1), p)  # (B, nh, S, S)
    return probs @ v  # (B, nh, S, hd)


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int, attention: str = "flash",
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(hidden)
        self.attn = CausalSelfAttention(hidden, heads, attention, dropout)
        self.ln2 = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, ffn), nn.GELU(approximate="tanh"), nn.Linear(ffn, hidden)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


class GPT(nn.Module):
    """Token ids (B, S) -> logits (B, S, vocab); the LM head reuses the token embedding."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab, cfg.hidden)
        self.wpe = nn.Embedding(cfg.seq, cfg.hidden)
        self.blocks = nn.ModuleList(
            Block(cfg.hidden, cfg.heads, cfg.ffn, cfg.attention, cfg.dropout)
            for _ in range(cfg.layers)
        )
        self.ln_f = nn.LayerNorm(cfg.hidden)
        self.apply(self._init)
        # GPT-2: residual projections scaled by 1/sqrt(2 * layers) at init.
        for name, param in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(param, std=0.02 / (2 * cfg.layers) ** 0.5)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        s = tokens.shape[1]
        pos = torch.arange(s, device=tokens.device)  # (S,)
        x = self.wte(tokens) + self.wpe(pos)  # (B, S, H)
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)  # (B, S, V), tied head


def token_data(
    cfg: Any, batch: int, seq: int | None, gen: torch.Generator, dev: torch.device
) -> tuple[tuple[Tensor, ...], Tensor]:
    """Random token ids (B, S) and next-token targets (B, S), both int64 in [0, vocab)."""
    s = cfg.seq if seq is None else seq
    stream = randint(cfg.vocab, (batch, s + 1), gen, dev)  # (B, S+1)
    return (stream[:, :-1],), stream[:, 1:]


SMALL_GPT = {"layers": 2, "hidden": 64, "heads": 4, "ffn": 256, "seq": 64, "vocab": 512}


def _register(name: str, summary: str, **preset: Any) -> None:
    MODELS.add(name, ModelEntry(
        config_cls=GPTConfig, make_model=GPT, make_data=token_data, loss_fn=classification_loss,
        preset=preset, small=SMALL_GPT, sequence=True, summary=summary, validate=check_heads,
    ))


_register("gpt2-small", "GPT-2 small, 124M parameters (12 x 768, 12 heads)")
_register("gpt2-medium", "GPT-2 medium, 355M parameters (24 x 1024, 16 heads)",
          layers=24, hidden=1024, heads=16, ffn=4096)
_register("gpt", "generic GPT-2-style decoder: --set layers= hidden= heads= ffn= seq= vocab=")
_register("gpt3-175b", "GPT-3 175B (96 x 12288, 96 heads, 2048 context)",
          layers=96, hidden=12288, heads=96, ffn=4 * 12288, seq=2048)
