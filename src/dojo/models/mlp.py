"""A plain multilayer perceptron classifier: the smallest model in the zoo.

Inputs: features (B, inputs) float32; output: logits (B, classes); target: class ids (B,).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dojo.config import check
from dojo.models.zoo import MODELS, ModelEntry, TrainConfig, classification_loss, randint, uniform


@dataclass(frozen=True, kw_only=True)
class MLPConfig(TrainConfig):
    """`layers` hidden layers of width `hidden` with ReLU, then a linear classifier."""

    inputs: int = field(default=784, metadata=check(ge=1))
    hidden: int = field(default=1024, metadata=check(ge=1))
    layers: int = field(default=3, metadata=check(ge=1))
    classes: int = field(default=10, metadata=check(ge=2))


def make_mlp(cfg: MLPConfig) -> nn.Module:
    """Sequential(first layer, Sequential(the `layers - 1` hidden layers), classifier).

    Each layer is a Sequential(Linear, ReLU) and the hidden ones sit in one stack of identical
    blocks, so the capture traces two of them and folds the rest (`dojo.capture.blocks`): the
    capture's work is bounded by the model's structure, not by `layers`. Parameters are created
    in the same order as a flat stack, so a seed gives the same initial weights.
    """
    def layer(d_in: int) -> nn.Module:
        return nn.Sequential(nn.Linear(d_in, cfg.hidden), nn.ReLU())

    parts = [layer(cfg.inputs)]
    if cfg.layers > 1:
        parts.append(nn.Sequential(*(layer(cfg.hidden) for _ in range(cfg.layers - 1))))
    return nn.Sequential(*parts, nn.Linear(cfg.hidden, cfg.classes))


def mlp_data(
    cfg: Any, batch: int, seq: int | None, gen: torch.Generator, dev: torch.device
) -> tuple[tuple[Tensor, ...], Tensor]:
    """Features (B, inputs) in [0, 1) and class ids (B,)."""
    return (uniform((batch, cfg.inputs), gen, dev),), randint(cfg.classes, (batch,), gen, dev)


MODELS.add("mlp", ModelEntry(
    config_cls=MLPConfig, make_model=make_mlp, make_data=mlp_data, loss_fn=classification_loss,
    small={"inputs": 64, "hidden": 64, "layers": 2}, summary="multilayer perceptron classifier",
))
