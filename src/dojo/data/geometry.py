"""Camera rig and pose geometry for the synthetic driving clips.

Conventions (shared with the occupancy model; do not change):
- camera frame: OpenCV, x right, y down, z forward (metres);
- ego frame: x forward, y left, z up, origin on the ground under the ego vehicle centre;
- extrinsics E are camera-to-ego, 4x4: p_ego = E @ p_cam (homogeneous);
- intrinsics K are 3x3 in pixels for the stored width W and height H; pixel centres sit at
  integer coordinates (OpenCV), so the image spans u in [-0.5, W - 0.5], v in [-0.5, H - 0.5];
- world frame: the ego frame of the road origin (z up); ego poses are ego-to-world 4x4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Standard ring: name, yaw (deg, left of forward), mount x, y (m, ego frame).
CAMERA_RING: tuple[tuple[str, float, float, float], ...] = (
    ("front", 0.0, 1.5, 0.0),
    ("front_left", 55.0, 1.0, 0.9),
    ("front_right", -55.0, 1.0, -0.9),
    ("back", 180.0, -1.5, 0.0),
    ("back_left", 125.0, -1.0, 0.9),
    ("back_right", -125.0, -1.0, -0.9),
)
CAMERA_HEIGHT_M = 1.6
HFOV_DEG = 90.0  # six cameras at 55-70 deg spacing overlap with a 90 deg field of view


@dataclass(frozen=True)
class Camera:
    """One calibrated pinhole camera: `K` (3x3 pixels) and `E` (4x4 camera-to-ego)."""

    name: str
    K: np.ndarray
    E: np.ndarray
    width: int
    height: int


def intrinsics(width: int, height: int, hfov_deg: float = HFOV_DEG) -> np.ndarray:
    """3x3 pinhole K with square pixels, principal point at the image centre (pixels)."""
    f = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    return np.array(
        [[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]],
        dtype=np.float64,
    )


def camera_to_ego(yaw_deg: float, x: float, y: float, z: float) -> np.ndarray:
    """4x4 camera-to-ego transform of a level camera looking `yaw_deg` left of ego forward."""
    yaw = math.radians(yaw_deg)
    forward = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
    down = np.array([0.0, 0.0, -1.0])
    E = np.eye(4)
    E[:3, 0], E[:3, 1], E[:3, 2] = right, down, forward  # columns: camera x, y, z in ego
    E[:3, 3] = (x, y, z)
    return E


def make_rig(n_cameras: int, width: int, height: int) -> tuple[Camera, ...]:
    """The first `n_cameras` (1..6) of the standard ring, in order front, front_left, ..."""
    K = intrinsics(width, height)
    return tuple(
        Camera(name, K.copy(), camera_to_ego(yaw, x, y, CAMERA_HEIGHT_M), width, height)
        for name, yaw, x, y in CAMERA_RING[:n_cameras]
    )


def pose2d(x: float, y: float, yaw: float) -> np.ndarray:
    """4x4 transform of a frame at (x, y, 0) rotated by `yaw` (rad) about z."""
    c, s = math.cos(yaw), math.sin(yaw)
    T = np.eye(4)
    T[:2, :2] = [[c, -s], [s, c]]
    T[:2, 3] = (x, y)
    return T


def pixel_rays(K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Unit ray directions in the camera frame through every pixel centre: (H*W, 3), row-major."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    d = np.stack(
        [(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], axis=-1
    ).reshape(-1, 3)  # (H*W, 3)
    return d / np.linalg.norm(d, axis=1, keepdims=True)
