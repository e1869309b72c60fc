"""ResNet-18 and ResNet-50 (He et al. 2015), layer for layer as torchvision builds them (v1.5:
the stride of a bottleneck stage sits on its 3x3 convolution).

Inputs: images (B, 3, image, image) float32; output: logits (B, classes); target: ids (B,).
Parameters: ResNet-18 11,689,512 and ResNet-50 25,557,032 with 1000 classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dojo.config import check
from dojo.models.zoo import MODELS, ModelEntry, TrainConfig, classification_loss, randint, uniform


@dataclass(frozen=True, kw_only=True)
class ResNetConfig(TrainConfig):
    """`blocks` per stage; `bottleneck` picks 1x1-3x3-1x1 blocks (x4 expansion) over 3x3-3x3."""

    optimizer: str = field(default="sgd", metadata=check(choices=("adamw", "sgd")))
    lr: float = field(default=0.1, metadata=check(gt=0))
    weight_decay: float = field(default=1e-4, metadata=check(ge=0))
    blocks: tuple[int, int, int, int] = (2, 2, 2, 2)
    bottleneck: bool = False
    width: int = field(default=64, metadata=check(ge=1))
    classes: int = field(default=1000, metadata=check(ge=2))
    image: int = field(default=224, metadata=check(ge=32, unit="pixels"))


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out)]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(c_in, width, 3, stride), nn.ReLU(inplace=True), *_conv_bn(width, width, 3)
        )
        self.short = _shortcut(c_in, width, stride)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.short(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        out = width * self.expansion
        self.body = nn.Sequential(
            *_conv_bn(c_in, width, 1), nn.ReLU(inplace=True),
            *_conv_bn(width, width, 3, stride), nn.ReLU(inplace=True),
            *_conv_bn(width, out, 1),
        )
        self.short = _shortcut(c_in, out, stride)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.short(x))


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))


class ResNet(nn.Module):
    """Stem (7x7/2 conv, 3x3/2 max pool), four stages, global average pool, linear classifier."""

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        block: type[BasicBlock] | type[Bottleneck] = Bottleneck if cfg.bottleneck else BasicBlock
        self.stem = nn.Sequential(
            *_conv_bn(3, cfg.width, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        )
        stages: list[nn.Module] = []
        c_in = cfg.width
        for i, n in enumerate(cfg.blocks):
            width = cfg.width * 2**i
            for j in range(n):
                stages.append(block(c_in, width, 2 if (j == 0 and i > 0) else 1))
                c_in = width * block.expansion
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, cfg.classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> Tensor:
        x = self.stages(self.stem(images))  # (B, C, H/32, W/32)
        return self.fc(x.mean(dim=(2, 3)))  # (B, classes)


def image_data(
    cfg: Any, batch: int, seq: int | None, gen: torch.Generator, dev: torch.device
) -> tuple[tuple[Tensor, ...], Tensor]:
    """Images (B, 3, image, image) in [0, 1) and class ids (B,)."""
    images = uniform((batch, 3, cfg.image, cfg.image), gen, dev)
    return (images,), randint(cfg.classes, (batch,), gen, dev)


SMALL_CNN = {"width": 8, "classes": 10, "image": 64}  # 2x2 at the last stage: BN works at batch 1

MODELS.add("resnet18", ModelEntry(
    config_cls=ResNetConfig, make_model=ResNet, make_data=image_data, loss_fn=classification_loss,
    small=SMALL_CNN, summary="ResNet-18, 11.7M parameters",
))
MODELS.add("resnet50", ModelEntry(
    config_cls=ResNetConfig, make_model=ResNet, make_data=image_data, loss_fn=classification_loss,
    preset={"blocks": (3, 4, 6, 3), "bottleneck": True}, small=SMALL_CNN,
    summary="ResNet-50, 25.6M parameters, 4.1 GMAC per 224x224 image",
))
