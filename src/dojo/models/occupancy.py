"""Occupancy network: multi-camera video -> bird's-eye-view occupancy logits for the last frame.

Inputs (geometry conventions in `dojo.models.geometry`):
  video (B, T, N, 3, H, W) float in [0, 1]; intrinsics (B, N, 3, 3) pixels;
  extrinsics (B, N, 4, 4) camera-to-ego, metres.
Output: logits (B, G, G), row i along ego x (forward), column j along ego y (left).
Target: (B, G, G) 0/1 occupancy; loss: binary cross entropy with logits.

Stages: a small CNN (stride 8) shared by every camera and frame; temporal fusion by a 1x1 conv
over the T frames' features stacked channel-wise (a learned weighted sum per channel, which also
sees motion); the geometric lift of `lift_to_bev` at a few heights; a few convs to logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dojo.config import check
from dojo.errors import ConfigError
from dojo.models.geometry import camera_rig, lift_to_bev
from dojo.models.zoo import MODELS, ModelEntry, TrainConfig, uniform

STRIDE = 8  # image pixels per encoder feature cell


@dataclass(frozen=True, kw_only=True)
class OccupancyConfig(TrainConfig):
    """Sizes of the occupancy network and of its example batch (defaults train on one CPU core)."""

    lr: float = field(default=1e-3, metadata=check(gt=0))
    weight_decay: float = field(default=0.01, metadata=check(ge=0))
    cameras: int = field(default=6, metadata=check(ge=1))
    frames: int = field(default=4, metadata=check(ge=1))
    height: int = field(default=64, metadata=check(ge=STRIDE, unit="pixels"))
    width: int = field(default=96, metadata=check(ge=STRIDE, unit="pixels"))
    grid: int = field(default=48, metadata=check(ge=1, unit="cells"))
    range_m: float = field(default=24.0, metadata=check(gt=0, unit="m"))
    channels: int = field(default=32, metadata=check(ge=2))
    heights: tuple[float, ...] = (0.5, 1.5)  # metres above ground where cells are sampled
    hfov_deg: float = field(default=75.0, metadata=check(gt=0, le=170, unit="degrees"))
    occupied: float = field(default=0.1, metadata=check(ge=0, le=1))  # example target density


def check_occupancy(cfg: Any, source: str) -> None:
    """Image sides are multiples of the encoder stride, and at least one sampling height."""
    for name in ("height", "width"):
        value = getattr(cfg, name)
        if value % STRIDE:
            raise ConfigError(source, name, value, f"a multiple of {STRIDE} pixels")
    if not cfg.heights:
        raise ConfigError(source, "heights", cfg.heights, "at least one height (m)")


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class OccupancyNet(nn.Module):
    """(video, intrinsics, extrinsics) -> occupancy logits (B, G, G) for the last frame."""

    def __init__(self, cfg: OccupancyConfig) -> None:
        super().__init__()
        c = cfg.channels
        self.cfg = cfg
        self.encoder = nn.Sequential(
            _conv(3, c // 2, 2), _conv(c // 2, c, 2), _conv(c, c, 2), _conv(c, c)
        )
        self.temporal = nn.Sequential(nn.Conv2d(cfg.frames * c, c, 1), nn.ReLU())
        z = len(cfg.heights)
        self.head = nn.Sequential(
            _conv(c * z + 1, c), _conv(c, c), nn.Conv2d(c, 1, 1)
        )

    def forward(self, video: Tensor, intrinsics: Tensor, extrinsics: Tensor) -> Tensor:
        b, t, n, _, h, w = video.shape
        feats = self.encoder(video.reshape(b * t * n, 3, h, w))  # (B*T*N, C, h/8, w/8)
        c, fh, fw = feats.shape[1:]
        feats = feats.reshape(b, t, n, c, fh, fw).permute(0, 2, 1, 3, 4, 5)  # (B, N, T, C, fh, fw)
        fused = self.temporal(feats.reshape(b * n, t * c, fh, fw))  # (B*N, C, fh, fw)
        cfg = self.cfg
        bev, count = lift_to_bev(
            fused.reshape(b, n, c, fh, fw), intrinsics, extrinsics, (h, w),
            cfg.grid, cfg.range_m, cfg.heights,
        )  # (B, C*Z, G, G), (B, Z, G, G)
        seen = (count > 0).to(bev.dtype).mean(dim=1, keepdim=True)  # (B, 1, G, G)
        return self.head(torch.cat((bev, seen), dim=1))[:, 0]  # (B, G, G)


def occupancy_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Mean binary cross entropy with logits; `target` (B, G, G) holds 0/1."""
    return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))


def occupancy_data(
    cfg: Any, batch: int, seq: int | None, gen: torch.Generator, dev: torch.device
) -> tuple[tuple[Tensor, ...], Tensor]:
    """Random video, the `camera_rig` calibration for every sample, a random 0/1 target."""
    video = uniform((batch, cfg.frames, cfg.cameras, 3, cfg.height, cfg.width), gen, dev)
    k, e = camera_rig(cfg.cameras, cfg.height, cfg.width, cfg.hfov_deg)  # (N, 3, 3), (N, 4, 4)
    intrinsics = k.expand(batch, -1, -1, -1).contiguous().to(dev)
    extrinsics = e.expand(batch, -1, -1, -1).contiguous().to(dev)
    target = (uniform((batch, cfg.grid, cfg.grid), gen, dev) < cfg.occupied).float()
    return (video, intrinsics, extrinsics), target


SMALL_OCC = {"cameras": 3, "frames": 2, "height": 32, "width": 48, "grid": 16, "channels": 8}

MODELS.add("occupancy", ModelEntry(
    config_cls=OccupancyConfig, make_model=OccupancyNet, make_data=occupancy_data,
    loss_fn=occupancy_loss, small=SMALL_OCC, validate=check_occupancy,
    summary="multi-camera video -> BEV occupancy (6 cameras, 4 frames, 64x96; CPU-trainable)",
))
MODELS.add("occupancy-large", ModelEntry(
    config_cls=OccupancyConfig, make_model=OccupancyNet, make_data=occupancy_data,
    loss_fn=occupancy_loss, small=SMALL_OCC, validate=check_occupancy,
    preset={"cameras": 8, "frames": 8, "height": 960, "width": 1280, "grid": 200,
            "range_m": 50.0, "channels": 64, "heights": (0.5, 1.5, 2.5), "hfov_deg": 60.0},
    summary="occupancy at simulation scale (8 cameras, 8 frames, 1280x960, 200x200 grid)",
))
