"""Geometry of the synthetic clips against references written here from the conventions.

Conventions: camera OpenCV (x right, y down, z forward); ego x forward, y left, z up; E is
camera-to-ego; K in pixels with pixel centres at integer coordinates.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dojo.data.geometry import make_rig
from dojo.data.render import render_view
from dojo.data.scene import Actor, Road, Scene, boxes_world, ego_pose

W, H = 96, 64
RED = (200, 40, 40)
# name -> (yaw deg left of forward, mount x, y, z) as the data docs state them
MOUNTS = {"front": (0, 1.5, 0.0, 1.6), "front_left": (55, 1.0, 0.9, 1.6),
          "front_right": (-55, 1.0, -0.9, 1.6), "back": (180, -1.5, 0.0, 1.6),
          "back_left": (125, -1.0, 0.9, 1.6), "back_right": (-125, -1.0, -0.9, 1.6)}


def test_front_camera_extrinsics_are_the_convention() -> None:
    front = make_rig(6, W, H)[0]
    # camera x (right) = ego -y, camera y (down) = ego -z, camera z (forward) = ego +x
    expected = np.array([[0, 0, 1, 1.5], [-1, 0, 0, 0], [0, -1, 0, 1.6], [0, 0, 0, 1]], float)
    np.testing.assert_allclose(front.E, expected, atol=1e-12)
    assert front.name == "front"


@pytest.mark.parametrize("index", range(6))
def test_every_camera_looks_along_its_yaw(index: int) -> None:
    cam = make_rig(6, W, H)[index]
    yaw, x, y, z = MOUNTS[cam.name]
    optical_axis = cam.E[:3, :3] @ np.array([0, 0, 1.0])
    np.testing.assert_allclose(optical_axis, [math.cos(math.radians(yaw)),
                                              math.sin(math.radians(yaw)), 0], atol=1e-12)
    np.testing.assert_allclose(cam.E[:3, :3] @ np.array([0, 1.0, 0]), [0, 0, -1], atol=1e-12)
    np.testing.assert_allclose(cam.E[:3, 3], [x, y, z])
    assert abs(np.linalg.det(cam.E[:3, :3]) - 1) < 1e-12  # a rotation, right-handed


def test_intrinsics_for_a_90_degree_field_of_view() -> None:
    K = make_rig(1, W, H)[0].K
    # 90 deg horizontal field: f = (W / 2) / tan(45 deg) = 48 px; centre of a 96x64 image
    np.testing.assert_allclose(K, np.array([[48, 0, 47.5], [0, 48, 31.5], [0, 0, 1]]))


def _one_box_view(camera: int, x: float, y: float,
                  size: tuple[float, float, float]) -> np.ndarray:
    """Render one red box with its centre at ego (x, y) on a straight road, ego at the origin."""
    length, width, height = size
    actor = Actor(0, length, width, height, RED, s0=x, d=y, speed=0.0)
    scene = Scene(Road(0.0), (actor,), ego_s0=0.0, ego_speed=0.0, fps=10.0, frames=1)
    cam = make_rig(6, W, H)[camera]
    np.testing.assert_allclose(ego_pose(scene, 0), np.eye(4), atol=1e-12)
    img = render_view(scene.road, ego_pose(scene, 0) @ cam.E, cam.K, W, H,
                      boxes_world(scene, 0), np.array([RED], float))
    return img.astype(int)


def _is_red(px: np.ndarray) -> bool:
    # the box is red in every shade; road is grey, sky blue, grass green, paint white
    return bool(px[0] > 50 and px[0] > 1.8 * max(px[1], px[2]))


def _project(p_cam: np.ndarray) -> tuple[float, float]:
    x, y, z = p_cam
    return 48.0 * x / z + 47.5, 48.0 * y / z + 31.5


def test_box_ahead_lands_where_the_pinhole_model_says() -> None:
    length, width, height = 4.0, 2.0, 1.5
    img = _one_box_view(0, 12.0, 0.0, (length, width, height))
    near = 12.0 - length / 2  # the rear face of the box faces the front camera
    # ego -> front camera: x_c = -y, y_c = 1.6 - z, z_c = x - 1.5
    u_l, v_top = _project(np.array([width / 2 * -1, 1.6 - height, near - 1.5]))
    u_r, v_bot = _project(np.array([width / 2, 1.6 - 0.0, near - 1.5]))
    u_c, v_c = _project(np.array([0.0, 1.6 - height / 2, near - 1.5]))
    assert _is_red(img[round(v_c), round(u_c)])
    row = round(v_c)
    for u in range(math.ceil(u_l) + 1, math.floor(u_r)):
        assert _is_red(img[row, u]), f"column {u} inside the projected face is not the box"
    for u in (math.floor(u_l) - 1, math.ceil(u_r) + 1):
        assert not _is_red(img[row, u]), f"column {u} outside the projected face is the box"
    for v in (math.floor(v_top) - 1, math.ceil(v_bot) + 1):
        assert not _is_red(img[v, round(u_c)]), f"row {v} outside the face is the box"
    assert _is_red(img[math.ceil(v_top) + 1, round(u_c)])


def test_box_behind_and_left_seen_by_the_back_camera() -> None:
    img = _one_box_view(3, -12.0, 3.5, (4.0, 2.0, 1.5))
    # ego -> back camera (yaw 180 at (-1.5, 0, 1.6)): x_c = y, y_c = 1.6 - z, z_c = -(x + 1.5)
    face = np.array([3.5, 1.6 - 0.75, -(-12.0 + 2.0 + 1.5)])
    u, v = _project(face)
    assert _is_red(img[round(v), round(u)])
    assert u > 47.5  # ego-left is image-right when looking backwards
    front = _one_box_view(0, -12.0, 3.5, (4.0, 2.0, 1.5))
    assert not any(_is_red(px) for px in front.reshape(-1, 3)), "front camera saw a box behind"


def test_ground_is_below_the_horizon_and_sky_above() -> None:
    img = _one_box_view(0, 50.0, 30.0, (0.4, 0.4, 0.4))  # a far-off box, out of the way
    # level camera at 1.6 m: the horizon is row cy = 31.5; rows below see the road (grey-ish)
    road = img[H - 1, W // 2]
    sky = img[0, W // 2]
    assert sky[2] > sky[0] + 40, "top row should be blue sky"
    assert abs(int(road[0]) - int(road[2])) < 25 and road[0] < 140, "bottom row should be asphalt"
