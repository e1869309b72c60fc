"""Vision Transformer ViT-B/16 (Dosovitskiy et al. 2020), shaped like torchvision's vit_b_16.

Patch embedding conv, class token, learned positions, pre-LN encoder blocks (GELU MLP), final
LayerNorm, linear head on the class token: 86,567,656 parameters with 1000 classes. Attention is
one non-causal `F.scaled_dot_product_attention` call per block.
Inputs: images (B, 3, image, image) float32; output: logits (B, classes); target: ids (B,).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dojo.config import check
from dojo.errors import ConfigError
from dojo.models.resnet import image_data
from dojo.models.zoo import MODELS, ModelEntry, TrainConfig, classification_loss


@dataclass(frozen=True, kw_only=True)
class ViTConfig(TrainConfig):
    """ViT shape; defaults are ViT-B/16 at 224x224 (196 patches + class token)."""

    image: int = field(default=224, metadata=check(ge=1, unit="pixels"))
    patch: int = field(default=16, metadata=check(ge=1, unit="pixels"))
    layers: int = field(default=12, metadata=check(ge=1))
    hidden: int = field(default=768, metadata=check(ge=1))
    heads: int = field(default=12, metadata=check(ge=1))
    ffn: int = field(default=3072, metadata=check(ge=1))
    classes: int = field(default=1000, metadata=check(ge=2))


def check_vit(cfg: Any, source: str) -> None:
    """The patch tiles the image and the heads divide the hidden size."""
    if cfg.image % cfg.patch:
        raise ConfigError(source, "patch", cfg.patch, f"a divisor of image={cfg.image}")
    if cfg.hidden % cfg.heads:
        raise ConfigError(source, "heads", cfg.heads, f"a divisor of hidden={cfg.hidden}")


class EncoderBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(hidden, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.ln2 = nn.LayerNorm(hidden, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Linear(ffn, hidden))

    def forward(self, x: Tensor) -> Tensor:
        b, s, _ = x.shape
        # Widths from the layers, not from x: a tensor-parallel split keeps heads/tp heads
        width = self.qkv.out_features // 3  # H (H/tp under tp)
        q, k, v = self.qkv(self.ln1(x)).split(width, dim=2)  # 3 x (B, S, H)
        q, k, v = (t.view(b, s, self.heads, width // self.heads).transpose(1, 2)
                   for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, S, hd)
        x = x + self.proj(y.transpose(1, 2).reshape(b, s, width))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        tokens = (cfg.image // cfg.patch) ** 2 + 1
        self.patch = nn.Conv2d(3, cfg.hidden, cfg.patch, cfg.patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.hidden))
        self.pos = nn.Parameter(torch.randn(1, tokens, cfg.hidden) * 0.02)
        self.blocks = nn.Sequential(
            *(EncoderBlock(cfg.hidden, cfg.heads, cfg.ffn) for _ in range(cfg.layers))
        )
        self.ln = nn.LayerNorm(cfg.hidden, eps=1e-6)
        self.head = nn.Linear(cfg.hidden, cfg.classes)

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch(images).flatten(2).transpose(1, 2)  # (B, P, H)
        x = torch.cat((self.cls.expand(x.shape[0], -1, -1), x), dim=1) + self.pos  # (B, P+1, H)
        return self.head(self.ln(self.blocks(x))[:, 0])  # (B, classes)


MODELS.add("vit-b16", ModelEntry(
    config_cls=ViTConfig, make_model=ViT, make_data=image_data, loss_fn=classification_loss,
    small={"image": 32, "patch": 8, "layers": 2, "hidden": 64, "heads": 4, "ffn": 128,
           "classes": 10},
    summary="ViT-B/16, 86.6M parameters", validate=check_vit,
))
