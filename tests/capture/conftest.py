"""Small models of our own for capture tests (independent of the model zoo)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TinyBlock(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x: Tensor) -> Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)  # 3 x (B, S, D)
        q, k, v = (t.view(b, s, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, S, hd)
        x = x + self.proj(y.transpose(1, 2).reshape(b, s, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    """Token ids (B, S) -> logits (B, S, V)."""

    def __init__(self, layers: int, d: int = 32, heads: int = 4, vocab: int = 64,
                 seq: int = 16) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(seq, d)
        self.blocks = nn.ModuleList(TinyBlock(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1]))  # (B, S, D)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # (B, S, V)


def lm_loss(logits: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(logits.flatten(0, 1), target.flatten())


@pytest.fixture
def tiny_gpt() -> object:
    """A factory: layers -> (model, inputs, loss_fn, targets), seeded."""

    def make(layers: int, device: str = "cpu") -> tuple[nn.Module, tuple[Tensor, ...], object,
                                                        tuple[Tensor, ...]]:
        gen = torch.Generator().manual_seed(0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            with torch.device(device):
                model = TinyGPT(layers)
        tokens = torch.randint(0, 64, (2, 16), generator=gen).to(device)
        target = torch.randint(0, 64, (2, 16), generator=gen).to(device)
        return model, (tokens,), lm_loss, (target,)

    return make
