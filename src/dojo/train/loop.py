"""Real training of the occupancy model on this machine: model, schedule, steps, evaluation.

Everything here is a function of the options and the data: the model is initialised from the
seed, batches come from a seeded `ClipLoader`, the learning rate is a pure function of the step
(linear warm-up, cosine decay to a tenth), and the model has no dropout, so a run resumed from
a checkpoint repeats the losses of an uninterrupted run exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dojo.data.layout import Manifest
from dojo.models import build
from dojo.numerics import apply_policy

MODEL = "occupancy"


@dataclass(frozen=True)
class Example:
    """One held-out sample for pictures: the last frame of the first camera (H, W, 3) in 0..1,
    predicted occupancy probability and ground truth (G, G), rows along ego x (forward)."""

    image: Tensor
    probability: Tensor
    truth: Tensor


def model_overrides(manifest: Manifest, window: int, channels: int, lr: float) -> dict[str, Any]:
    """The occupancy config that matches the clip set: cameras, frames, image size, grid."""
    return {"cameras": len(manifest.cameras), "frames": window, "height": manifest.height,
            "width": manifest.width, "grid": manifest.grid.size,
            "range_m": float(manifest.grid.range_m), "channels": channels, "lr": lr}


def make_model(overrides: dict[str, Any], precision: str, seed: int
               ) -> tuple[nn.Module, torch.optim.Optimizer, Callable[..., Tensor]]:
    """The model (seeded, under the precision policy), its optimizer, and the loss function."""
    bundle = build(MODEL, batch=1, overrides=overrides, seed=seed)
    model = apply_policy(bundle.model, precision, seed=seed)
    return model, bundle.make_optimizer(model.parameters()), bundle.loss_fn


def lr_at(step: int, steps: int, base: float, warmup: int) -> float:
    """Learning rate of step `step` (0-based) of `steps`: linear warm-up over `warmup` steps,
    then cosine decay from `base` to base / 10 at the last step."""
    if step < warmup:
        return base * (step + 1) / warmup
    span = max(1, steps - 1 - warmup)
    progress = min(1.0, (step - warmup) / span)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batches(loader: Any) -> Iterator[dict[str, Any]]:
    """Non-empty batches forever, epoch after epoch (a batch whose every window was skipped
    for bad data is passed over; the loader has recorded why)."""
    while True:
        for batch in loader:
            if batch["frames"].shape[0]:
                yield batch


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer,
               loss_fn: Callable[..., Tensor], batch: dict[str, Any], lr: float) -> float:
    """One optimizer step on `batch` at learning rate `lr`; returns the loss before the step."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    logits = model(batch["frames"], batch["intrinsics"], batch["extrinsics"])  # (B, G, G)
    loss = loss_fn(logits, batch["occupancy"])
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def iou(predicted: Tensor, truth: Tensor) -> float:
    """Intersection over union of two boolean occupancy masks of the same shape, over every
    cell together; 1.0 when both are empty (nothing to find, nothing claimed)."""
    inter = int((predicted & truth).sum())
    union = int((predicted | truth).sum())
    return 1.0 if union == 0 else inter / union


@torch.no_grad()
def evaluate(model: nn.Module, val_batches: list[dict[str, Any]], examples: int = 0
             ) -> tuple[float, list[Example]]:
    """Occupancy IoU over all held-out samples (a cell is predicted occupied when its
    probability exceeds 0.5), and up to `examples` samples (one per clip) for pictures."""
    was_training = model.training
    model.eval()
    preds: list[Tensor] = []
    truths: list[Tensor] = []
    shown: list[Example] = []
    clips: set[int] = set()
    for batch in val_batches:
        logits = model(batch["frames"], batch["intrinsics"], batch["extrinsics"])  # (B, G, G)
        preds.append(logits > 0)
        truths.append(batch["occupancy"] > 0.5)
        for k in range(batch["frames"].shape[0]):
            if len(shown) < examples and int(batch["clip"][k]) not in clips:  # one per clip
                clips.add(int(batch["clip"][k]))
                frame = batch["frames"][k, -1, 0].permute(1, 2, 0).float()  # (H, W, 3)
                shown.append(Example(frame / 255 if frame.max() > 1 else frame,
                                     torch.sigmoid(logits[k]), batch["occupancy"][k]))
    model.train(was_training)
    return iou(torch.cat(preds), torch.cat(truths)), shown
