"""Occupancy network: camera geometry against a pinhole model written here, masking, training."""

from __future__ import annotations

import math

import pytest
import torch

from dojo.models import build
from dojo.models.geometry import camera_rig, lift_to_bev, project, visible


def _pinhole(fx: float, fy: float, cx: float, cy: float, p_cam: tuple[float, float, float]
             ) -> tuple[float, float]:
    x, y, z = p_cam
    return fx * x / z + cx, fy * y / z + cy


@pytest.mark.parametrize("camera", range(6))
def test_point_in_front_of_camera_projects_like_a_pinhole(camera: int) -> None:
    k, e = camera_rig(6, 64, 96)
    p_cam = (1.5, -0.4, 12.0)  # right of, above, and 12 m in front of the camera (OpenCV)
    p_ego = e[camera] @ torch.tensor([*p_cam, 1.0])  # p_ego = E @ p_cam
    uv, depth = project(p_ego[:3].view(1, 1, 3), k[None], e[None])
    expected = _pinhole(float(k[camera, 0, 0]), float(k[camera, 1, 1]), float(k[camera, 0, 2]),
                        float(k[camera, 1, 2]), p_cam)
    torch.testing.assert_close(uv[0, camera, 0], torch.tensor(expected))
    assert float(depth[0, camera, 0]) == pytest.approx(12.0)


def test_rig_follows_the_ego_conventions() -> None:
    height, width, hfov = 64, 96, 75.0
    k, e = camera_rig(6, height, width, hfov)
    f = (width / 2) / math.tan(math.radians(hfov / 2))
    # OpenCV pixels: integer pixel centres, so the centre of a 96 x 64 image is (47.5, 31.5).
    torch.testing.assert_close(k[0], torch.tensor([[f, 0, 47.5], [0, f, 31.5], [0, 0, 1.0]]))
    # Ego x forward, y left, z up. A point 20 m straight ahead at camera height is the centre
    # pixel of the front camera; a point ahead and to the left (y > 0) lands left of centre
    # (smaller u); a point on the ground lands below the centre (larger v).
    pts = torch.tensor([[[21.0, 0.0, 1.6], [21.0, 3.0, 1.6], [21.0, 0.0, 0.0]]])
    uv, depth = project(pts, k[None], e[None])
    torch.testing.assert_close(uv[0, 0, 0], torch.tensor([47.5, 31.5]))
    assert uv[0, 0, 1, 0] < 47.5 and uv[0, 0, 2, 1] > 31.5
    # Camera 3 of 6 looks backwards: the point ahead is behind it and not visible.
    assert depth[0, 3, 0] < 0 and not visible(uv, depth, height, width)[0, 3, 0]
    # Camera 1 (yaw +60 degrees, front-left) sees a point 10 m away along its yaw at its centre.
    yaw = math.radians(60)
    p = torch.tensor([[[11 * math.cos(yaw), 11 * math.sin(yaw), 1.6]]])
    uv, _ = project(p, k[None], e[None])
    torch.testing.assert_close(uv[0, 1, 0], torch.tensor([47.5, 31.5]))


def test_cells_behind_all_cameras_get_no_features() -> None:
    # One forward camera at the origin: every cell with x < 0 is behind it.
    k, e = camera_rig(1, 32, 48, hfov_deg=90.0)
    e[0, :3, 3] = torch.tensor([0.0, 0.0, 1.6])
    feats = torch.ones(1, 1, 4, 4, 6)  # (B, N, C, h, w): constant features
    grid, rng = 20, 10.0
    bev, count = lift_to_bev(feats, k[None], e[None], (32, 48), grid, rng, (0.5, 1.5))
    centres = -rng + (torch.arange(grid) + 0.5) * (2 * rng / grid)  # x_i, independent of the code
    behind = centres < 0
    assert torch.all(bev[0][:, behind] == 0) and torch.all(count[0][:, behind] == 0)
    # Straight ahead (|y| small, x > 3 m: nearer, the 0.5 m height falls below the vertical field
    # of view of a camera 1.6 m up) the camera sees the cell and copies the features.
    ahead = (centres > 3.0).nonzero()[:, 0]
    middle = grid // 2
    assert torch.all(count[0][:, ahead, middle] == 1)
    torch.testing.assert_close(bev[0][:, ahead, middle], torch.ones(8, len(ahead)))
    # Inside a 90 degree view cone: |y| < x is seen, |y| > x is not (away from the edges).
    x, y = centres[:, None], centres[None, :]
    seen = count[0, 0] > 0
    assert torch.all(seen[((y.abs() < 0.8 * x) & (x > 3.0)).expand(grid, grid)])
    assert not torch.any(seen[(y.abs() > 1.2 * x).expand(grid, grid)])


def test_example_batch_and_output_shapes() -> None:
    bundle = build("occupancy", batch=2)
    video, intr, extr = bundle.example_inputs
    assert video.shape == (2, 4, 6, 3, 64, 96) and video.min() >= 0 and video.max() <= 1
    assert intr.shape == (2, 6, 3, 3) and extr.shape == (2, 6, 4, 4)
    # Extrinsics are rigid: rotation part orthonormal with determinant +1.
    rot = extr[..., :3, :3]
    torch.testing.assert_close(rot @ rot.transpose(-1, -2), torch.eye(3).expand(2, 6, 3, 3))
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(2, 6))
    logits = bundle.model(*bundle.example_inputs)
    assert logits.shape == (2, 48, 48) == bundle.targets[0].shape
    assert set(bundle.targets[0].unique().tolist()) <= {0.0, 1.0}
    large = build("occupancy-large", device="meta", batch=1)
    assert large.example_inputs[0].shape == (1, 8, 8, 3, 960, 1280)
    assert large.model(*large.example_inputs).shape == (1, 200, 200)


def test_loss_is_bce_and_it_learns_a_fixed_batch() -> None:
    torch.set_num_threads(1)
    bundle = build("occupancy", small=True, batch=2, overrides={"lr": 3e-3})
    logits = torch.randn(2, 16, 16)
    target = bundle.targets[0]
    p = torch.sigmoid(logits)
    bce = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    torch.testing.assert_close(bundle.loss_fn(logits, target), bce)
    opt = bundle.make_optimizer(bundle.model.parameters())
    losses = [float(bundle.train_step(opt)) for _ in range(15)]
    assert losses[-1] < 0.8 * losses[0]


def test_lift_samples_the_pixel_the_pinhole_model_names() -> None:
    # A full-resolution feature map whose channel 0 holds each pixel's column u and channel 1 its
    # row v: bilinear sampling returns exactly the (u, v) where the cell centre projects.
    h, w, grid, rng, z = 32, 48, 12, 12.0, 0.4
    k, e = camera_rig(1, h, w, hfov_deg=100.0)
    e[0, :3, 3] = torch.tensor([0.0, 0.0, 1.6])
    v_idx, u_idx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    feats = torch.stack((u_idx, v_idx)).float()[None, None]  # (1, 1, 2, H, W)
    bev, count = lift_to_bev(feats, k[None], e[None], (h, w), grid, rng, (z,))
    fx, cx, cy = float(k[0, 0, 0]), float(k[0, 0, 2]), float(k[0, 1, 2])
    checked = 0
    for i in range(grid):
        for j in range(grid):
            x = -rng + (i + 0.5) * 2 * rng / grid
            y = -rng + (j + 0.5) * 2 * rng / grid
            if x <= 0.5:
                continue
            # Camera frame of a level forward camera 1.6 m up: X = -y, Y = 1.6 - z, Z = x.
            u, v = _pinhole(fx, fx, cx, cy, (-y, 1.6 - z, x))
            if 0 <= u <= w - 1 and 0 <= v <= h - 1:  # interior: no zero padding in the blend
                torch.testing.assert_close(bev[0, :, i, j], torch.tensor([u, v]))
                assert count[0, 0, i, j] == 1
                checked += 1
    assert checked > 10
