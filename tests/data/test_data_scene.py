"""Scenes and labels: occupancy against an independent per-cell reference, road coordinates,
plausible kinematics (nothing overlaps), labels consistent with the stored poses."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from dojo.data.scene import Road, boxes_world, ego_pose, make_scene, occupancy, to_ego
from dojo.data.synth import SynthConfig, clip_scene


def _reference_grid(boxes: np.ndarray, g: int, r: float) -> np.ndarray:
    """Cell (i, j) centre (x_i, y_j) = -R + (k + 0.5) 2R / G; occupied when inside a footprint."""
    out = np.zeros((g, g), np.uint8)
    for i in range(g):
        for j in range(g):
            px, py = -r + (i + 0.5) * 2 * r / g, -r + (j + 0.5) * 2 * r / g
            for x, y, _, length, width, _, yaw in boxes:
                rot = np.array([[math.cos(yaw), math.sin(yaw)], [-math.sin(yaw), math.cos(yaw)]])
                u, v = rot @ np.array([px - x, py - y])  # cell centre in box axes
                if abs(u) < length / 2 and abs(v) < width / 2:
                    out[i, j] = 1
    return out


def test_axis_aligned_box_marks_the_cells_by_hand() -> None:
    # G = 32, R = 16: 1 m cells, centres at -15.5 .. 15.5. Box x in [2, 6], y in [-1, 1]:
    # x centres 2.5..5.5 -> rows 18..21; y centres -0.5, 0.5 -> columns 15, 16.
    box = np.array([[4.0, 0.0, 0.75, 4.0, 2.0, 1.5, 0.0]])
    grid = occupancy(box, 32, 16.0)
    expected = np.zeros((32, 32), np.uint8)
    expected[18:22, 15:17] = 1
    np.testing.assert_array_equal(grid, expected)


def test_rotated_boxes_match_the_reference() -> None:
    rng = np.random.default_rng(11)
    boxes = np.column_stack([rng.uniform(-14, 14, (6, 2)), np.full(6, 0.8),
                             rng.uniform(0.5, 6, 6), rng.uniform(0.5, 3, 6), np.full(6, 1.6),
                             rng.uniform(-math.pi, math.pi, 6)])
    for g, r in ((32, 16.0), (20, 10.0)):
        np.testing.assert_array_equal(occupancy(boxes, g, r), _reference_grid(boxes, g, r))


@pytest.mark.parametrize("curvature", [0.0, 1 / 120, -1 / 90])
def test_road_coordinates_round_trip(curvature: float) -> None:
    road = Road(curvature)
    s = np.linspace(-60, 60, 25)
    d = np.linspace(-8, 8, 25)
    x, y = road.point(s, d)
    s2, d2 = road.to_road(x, y)
    np.testing.assert_allclose(s2, s, atol=1e-9)
    np.testing.assert_allclose(d2, d, atol=1e-9)
    # arc length: neighbouring centreline points are |ds| apart along the arc (chord ~ arc)
    cx, cy = road.point(np.array([0.0, 1.0]), np.zeros(2))
    assert abs(math.hypot(cx[1] - cx[0], cy[1] - cy[0]) - 1.0) < 1e-4


def _corners(box: np.ndarray) -> np.ndarray:
    x, y, _, length, width, _, yaw = box
    c, s = math.cos(yaw), math.sin(yaw)
    local = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]]) * [length / 2, width / 2]
    return local @ np.array([[c, s], [-s, c]]) + [x, y]


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test of two rectangles given as (4, 2) corners."""
    for poly in (a, b):
        for k in range(4):
            edge = poly[(k + 1) % 4] - poly[k]
            axis = np.array([-edge[1], edge[0]])
            pa, pb = a @ axis, b @ axis
            if pa.max() <= pb.min() or pb.max() <= pa.min():
                return False
    return True


EGO = np.array([0.0, 0.0, 0.0, 4.6, 1.9, 1.5, 0.0])


@pytest.mark.parametrize("seed", range(4))
def test_actors_never_overlap_each_other_or_the_ego(seed: int) -> None:
    scene = make_scene(np.random.default_rng(seed), frames=30, fps=10.0)
    assert len(scene.actors) >= 4
    for k in range(0, 30, 3):
        boxes = to_ego(boxes_world(scene, k), ego_pose(scene, k))
        corners = [_corners(b) for b in boxes]
        assert not any(_overlap(_corners(EGO), c) for c in corners), f"frame {k}: hits ego"
        for i in range(len(corners)):
            for j in range(i):
                assert not _overlap(corners[i], corners[j]), f"frame {k}: actors {i}, {j}"


def test_stored_labels_agree_with_stored_poses(tiny_set: Path, tiny_cfg: SynthConfig) -> None:
    cfg = tiny_cfg
    labels = np.load(tiny_set / "clip_0001" / "labels.npz")
    scene = clip_scene(cfg, 1)
    poses, boxes = labels["ego_poses"], labels["boxes"]
    for k in range(cfg.frames):
        world = boxes_world(scene, k)
        # ego-frame box centres mapped back with the stored ego-to-world pose give the world ones
        back = np.column_stack([boxes[k, :, :3], np.ones(len(world))]) @ poses[k].T
        np.testing.assert_allclose(back[:, :3], world[:, :3], atol=1e-3)
        np.testing.assert_array_equal(labels["occupancy"][k],
                                      _reference_grid(boxes[k].astype(float), cfg.grid,
                                                      cfg.range_m))
    # the ego moves forward along +x of its own frame at its speed (m per frame)
    step = np.linalg.inv(poses[0]) @ poses[1]
    assert step[0, 3] == pytest.approx(scene.ego_speed / cfg.fps, rel=1e-3)
    assert abs(step[1, 3]) < 0.05


def test_ego_footprint_is_never_occupied() -> None:
    cfg = SynthConfig(clips=1, frames=4)
    c = -16 + (np.arange(32) + 0.5)
    ego_cells = (np.abs(c)[:, None] < 2.3) & (np.abs(c)[None, :] < 0.95)
    for index in range(6):
        scene = clip_scene(cfg, index)
        for k in range(scene.frames):
            grid = occupancy(to_ego(boxes_world(scene, k), ego_pose(scene, k)), 32, 16.0)
            assert not grid[ego_cells].any()
