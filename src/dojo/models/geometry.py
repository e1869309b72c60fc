"""Camera geometry for the occupancy model: rigs, projection, and lifting image features to BEV.

Conventions (shared with the driving data set):
- camera frame: OpenCV, x right, y down, z forward (metres);
- ego frame: x forward, y left, z up, origin on the ground under the vehicle centre (metres);
- extrinsics E (4x4) map camera to ego: p_ego = E @ p_cam; they are rigid (rotation + translation);
- intrinsics K (3x3) map camera points to pixels: (u*z, v*z, z) = K @ p_cam; pixel centres sit at
  integer coordinates (OpenCV), so the image spans u in [-0.5, W - 0.5), v in [-0.5, H - 0.5)
  and its centre is ((W - 1) / 2, (H - 1) / 2) (the convention of `dojo.data`);
- BEV grid: G x G cells over x in [-R, R) (row i) and y in [-R, R) (column j); the centre of cell
  (i, j) is x_i = -R + (i + 0.5) * 2R / G, y_j = -R + (j + 0.5) * 2R / G.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MIN_DEPTH_M = 0.1  # points closer than this in front of a camera count as not seen


def camera_rig(
    cameras: int, height: int, width: int, hfov_deg: float = 75.0
) -> tuple[Tensor, Tensor]:
    """A ring of `cameras` evenly spaced in yaw (camera 0 looks forward, yaw grows to the left).

    Each sits 1.0 m from the vehicle centre in its viewing direction and 1.6 m above the ground,
    looking horizontally, with square pixels and horizontal field of view `hfov_deg`.
    Returns intrinsics (N, 3, 3) in pixels for an image `height` x `width`, and camera-to-ego
    extrinsics (N, 4, 4) in metres.
    """
    f = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
    k = torch.tensor([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])
    intrinsics = k.expand(cameras, 3, 3).clone()
    extrinsics = torch.zeros(cameras, 4, 4)
    for n in range(cameras):
        yaw = 2 * math.pi * n / cameras
        c, s = math.cos(yaw), math.sin(yaw)
        # Columns: the camera's x (right), y (down) and z (forward) axes seen in the ego frame.
        extrinsics[n, :3, 0] = torch.tensor([s, -c, 0.0])
        extrinsics[n, :3, 1] = torch.tensor([0.0, 0.0, -1.0])
        extrinsics[n, :3, 2] = torch.tensor([c, s, 0.0])
        extrinsics[n, :3, 3] = torch.tensor([1.0 * c, 1.0 * s, 1.6])
        extrinsics[n, 3, 3] = 1.0
    return intrinsics, extrinsics


def bev_points(
    grid: int, range_m: float, heights: tuple[float, ...], device: torch.device
) -> Tensor:
    """Ego-frame points (Z, G, G, 3): every BEV cell centre at every height in `heights` (m)."""
    centres = -range_m + (torch.arange(grid, device=device) + 0.5) * (2 * range_m / grid)  # (G,)
    z = torch.tensor(heights, device=device)  # (Z,)
    zz, xx, yy = torch.meshgrid(z, centres, centres, indexing="ij")  # (Z, G, G) each
    return torch.stack((xx, yy, zz), dim=-1)  # (Z, G, G, 3)


def project(points: Tensor, intrinsics: Tensor, extrinsics: Tensor) -> tuple[Tensor, Tensor]:
    """Project ego points (B, P, 3) into every camera.

    Returns pixels (B, N, P, 2) as (u, v) and depth (B, N, P) along the camera's z axis (m).
    Pixels of points at depth <= MIN_DEPTH_M are meaningless (use `visible`).
    """
    rot = extrinsics[:, :, :3, :3]  # (B, N, 3, 3) camera -> ego
    trans = extrinsics[:, :, :3, 3]  # (B, N, 3)
    rel = points[:, None] - trans[:, :, None]  # (B, N, P, 3)
    cam = rel @ rot  # (B, N, P, 3): R^T (p - t), rows times R
    depth = cam[..., 2]  # (B, N, P)
    pix = cam @ intrinsics.transpose(-1, -2)  # (B, N, P, 3)
    uv = pix[..., :2] / depth.clamp(min=MIN_DEPTH_M)[..., None]  # (B, N, P, 2)
    return uv, depth


def visible(uv: Tensor, depth: Tensor, height: int, width: int) -> Tensor:
    """Bool (B, N, P): in front of the camera and inside the image [-0.5, W-0.5) x [-0.5, H-0.5)."""
    u, v = uv[..., 0] + 0.5, uv[..., 1] + 0.5  # edge-based: the image spans [0, W) x [0, H)
    return (depth > MIN_DEPTH_M) & (u >= 0) & (u < width) & (v >= 0) & (v < height)


def lift_to_bev(
    features: Tensor,
    intrinsics: Tensor,
    extrinsics: Tensor,
    image_hw: tuple[int, int],
    grid: int,
    range_m: float,
    heights: tuple[float, ...],
) -> tuple[Tensor, Tensor]:
    """Sample per-camera features (B, N, C, h, w) at the BEV cell centres at each height.

    The feature map covers the whole image of size `image_hw` (pixels, at any stride). Each
    (cell, height) gets the mean of the features of the cameras that see it, or zeros when none
    does. Returns BEV features (B, C * Z, G, G) and the number of seeing cameras (B, Z, G, G).
    """
    b, n, c, h, w = features.shape
    img_h, img_w = image_hw
    z = len(heights)
    points = bev_points(grid, range_m, heights, features.device).reshape(1, -1, 3)  # (1, P, 3)
    uv, depth = project(points.expand(b, -1, -1), intrinsics, extrinsics)  # (B, N, P, 2)
    seen = visible(uv, depth, img_h, img_w).to(features.dtype)  # (B, N, P)
    scale = torch.tensor([2.0 / img_w, 2.0 / img_h], device=features.device)
    # grid_sample(align_corners=False) puts -1 and +1 on the outer image edges, pixel -0.5 and
    # W - 0.5 in OpenCV coordinates, for the feature map at any stride.
    norm = ((uv + 0.5) * scale - 1.0).clamp(-2.0, 2.0)  # (B, N, P, 2)
    sampled = F.grid_sample(
        features.reshape(b * n, c, h, w),
        norm.reshape(b * n, z * grid, grid, 2),
        mode="bilinear", padding_mode="zeros", align_corners=False,
    )  # (B*N, C, Z*G, G)
    sampled = sampled.reshape(b, n, c, z, grid, grid)
    seen = seen.reshape(b, n, 1, z, grid, grid)
    count = seen.sum(dim=1)  # (B, 1, Z, G, G)
    bev = (sampled * seen).sum(dim=1) / count.clamp(min=1.0)  # (B, C, Z, G, G)
    return bev.reshape(b, c * z, grid, grid), count[:, 0]
