"""Procedural driving scenes: a road, actors moving along it, the ego vehicle, and labels.

The road is a circular arc of constant curvature (0 = straight) through the world origin with
heading +x there. A point is addressed in road coordinates (s, d): arc length s (m) along the
centreline and lateral offset d (m, positive to the left). Lanes are `LANE_WIDTH` wide and centred
at d = -3.5 (same direction as ego), 0 (ego lane) and +3.5 (oncoming); sidewalks lie beyond
|d| = 5.25. Actors keep their lane and speed (steady-state bicycle model: heading follows the lane
tangent), so no two actors ever overlap. Boxes are [x, y, z, length, width, height, yaw] with z at
the box centre and yaw (rad) about z; all lengths in metres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dojo.data.geometry import pose2d

LANE_WIDTH = 3.5
ROAD_HALF_WIDTH = 1.5 * LANE_WIDTH
SIDEWALK_OUTER = ROAD_HALF_WIDTH + 3.0
CLASS_NAMES: tuple[str, ...] = ("car", "truck", "pedestrian", "cone")
EGO_LENGTH, EGO_WIDTH = 4.6, 1.9
# length, width, height ranges (m) per class
_SIZES = {
    0: ((4.0, 4.8), (1.7, 2.0), (1.4, 1.7)),
    1: ((6.5, 9.0), (2.3, 2.5), (2.6, 3.4)),
    2: ((0.5, 0.7), (0.5, 0.7), (1.6, 1.9)),
    3: ((0.35, 0.45), (0.35, 0.45), (0.6, 0.8)),
}
_PALETTE = ((200, 40, 40), (40, 70, 190), (230, 230, 230), (30, 30, 30), (210, 170, 40),
            (60, 150, 70), (140, 60, 160), (120, 120, 130))


@dataclass(frozen=True)
class Road:
    """A constant-curvature road; `curvature` in 1/m, positive bends left. `features` are
    painted or paved places along it as (kind, s): "zebra" (a pedestrian crossing centred at
    arc length s), "crossroad" (a cross street 10 m wide centred at s), "parking" (a car park:
    paved to the sidewalks' outer edge, stalls every 2.7 m)."""

    curvature: float = 0.0
    features: tuple[tuple[str, float], ...] = ()

    def point(self, s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World (x, y) of road coordinates (s, d), arrays of equal shape (m)."""
        k = self.curvature
        if abs(k) < 1e-9:
            return np.asarray(s, np.float64), np.asarray(d, np.float64)
        a = k * np.asarray(s, np.float64)
        r = 1.0 / k - np.asarray(d, np.float64)
        return r * np.sin(a), 1.0 / k - r * np.cos(a)

    def heading(self, s: np.ndarray) -> np.ndarray:
        """Tangent direction (rad) of the centreline at arc length s."""
        return self.curvature * np.asarray(s, np.float64)

    def to_road(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of `point` for |d| < 1/|curvature|: world (x, y) -> (s, d)."""
        k = self.curvature
        if abs(k) < 1e-9:
            return x, y
        rho = 1.0 / k
        sign = math.copysign(1.0, rho)
        dx, dy = x, y - rho
        d = rho - sign * np.hypot(dx, dy)
        a = np.arctan2(sign * dx, -sign * dy)
        return a / k, d


@dataclass(frozen=True)
class Actor:
    """An object that keeps lane offset `d` and signed speed along the road (m/s)."""

    kind: int
    length: float
    width: float
    height: float
    colour: tuple[int, int, int]
    s0: float
    d: float
    speed: float
    yaw_offset: float = 0.0  # rad relative to the lane tangent (pi: facing backwards)
    d_speed: float = 0.0  # lateral speed (m/s, + to the left): crossing, cutting in


@dataclass(frozen=True)
class Scene:
    """Road, actors and ego motion of one clip; frame k is at time k / fps seconds."""

    road: Road
    actors: tuple[Actor, ...]
    ego_s0: float
    ego_speed: float
    fps: float
    frames: int
    ego_d: float = 0.0
    tags: tuple[tuple[str, str], ...] = ()  # what the generator drew: scenario, weather, ...


def ego_pose(scene: Scene, k: int) -> np.ndarray:
    """4x4 ego-to-world pose at frame k."""
    s = scene.ego_s0 + scene.ego_speed * k / scene.fps
    x, y = scene.road.point(np.array(s), np.array(scene.ego_d))
    return pose2d(float(x), float(y), float(scene.road.heading(np.array(s))))


def boxes_world(scene: Scene, k: int) -> np.ndarray:
    """(M, 7) actor boxes in the world frame at frame k."""
    if not scene.actors:
        return np.zeros((0, 7))
    t = k / scene.fps
    s = np.array([a.s0 + a.speed * t for a in scene.actors])
    d = np.array([a.d + a.d_speed * t for a in scene.actors])
    x, y = scene.road.point(s, d)
    yaw = scene.road.heading(s) + np.array([a.yaw_offset for a in scene.actors])
    size = np.array([(a.length, a.width, a.height) for a in scene.actors])
    return np.column_stack([x, y, size[:, 2] / 2, size, yaw])


def to_ego(boxes: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Boxes (M, 7) from the world frame into the ego frame of ego-to-world `pose`."""
    inv = np.linalg.inv(pose)
    out = boxes.copy()
    xyz = np.column_stack([boxes[:, :3], np.ones(len(boxes))]) @ inv.T  # (M, 4)
    out[:, :3] = xyz[:, :3]
    out[:, 6] = boxes[:, 6] - math.atan2(pose[1, 0], pose[0, 0])
    out[:, 6] = (out[:, 6] + math.pi) % (2 * math.pi) - math.pi
    return out


def occupancy(boxes_ego: np.ndarray, grid: int, range_m: float) -> np.ndarray:
    """(grid, grid) uint8 BEV grid: 1 where the cell centre lies inside a box footprint.

    Row i runs along ego x, column j along ego y; cell centres are -R + (i + 0.5) * 2R / G.
    """
    c = -range_m + (np.arange(grid) + 0.5) * (2.0 * range_m / grid)
    gx, gy = np.meshgrid(c, c, indexing="ij")  # (G, G): gx varies along rows
    occ = np.zeros((grid, grid), dtype=bool)
    for x, y, _, length, width, _, yaw in boxes_ego:
        dx, dy = gx - x, gy - y
        u = dx * math.cos(yaw) + dy * math.sin(yaw)
        v = -dx * math.sin(yaw) + dy * math.cos(yaw)
        occ |= (np.abs(u) < length / 2) & (np.abs(v) < width / 2)
    return occ.astype(np.uint8)


def make_scene(rng: np.random.Generator, frames: int, fps: float) -> Scene:
    """A random scene: curved or straight road, traffic in three lanes, pedestrians, cones."""
    curvature = 0.0 if rng.random() < 0.4 else float(rng.uniform(-1 / 150, 1 / 150))
    ego_s0 = float(rng.uniform(-20.0, 20.0))
    ego_speed = float(rng.uniform(5.0, 12.0))
    actors: list[Actor] = []
    for lane, speed in ((-1, ego_speed + rng.uniform(-3, 3)), (0, ego_speed),
                        (1, -rng.uniform(5.0, 12.0))):
        actors += _lane_traffic(rng, lane * LANE_WIDTH, float(speed), ego_s0, lane == 0)
    for side in (-1.0, 1.0):
        actors += _pedestrians(rng, side, ego_s0)
        actors += _cones(rng, side, ego_s0)
    return Scene(Road(curvature), tuple(actors), ego_s0, ego_speed, fps, frames)


def _size(rng: np.random.Generator, kind: int) -> tuple[float, float, float]:
    (l0, l1), (w0, w1), (h0, h1) = _SIZES[kind]
    return float(rng.uniform(l0, l1)), float(rng.uniform(w0, w1)), float(rng.uniform(h0, h1))


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = _PALETTE[int(rng.integers(len(_PALETTE)))]
    return (r, g, b)


def _lane_traffic(rng: np.random.Generator, d: float, speed: float, ego_s0: float,
                  ego_lane: bool, truck_share: float = 0.15) -> list[Actor]:
    """Vehicles in one lane, all at the same speed, spaced so they never touch (or the ego)."""
    out = []
    s = ego_s0 - 35.0 + float(rng.uniform(0.0, 10.0))
    while s < ego_s0 + 45.0:
        kind = 1 if rng.random() < truck_share else 0
        length, width, height = _size(rng, kind)
        clear_of_ego = abs(s - ego_s0) > (length + EGO_LENGTH) / 2 + 3.0
        if (not ego_lane or clear_of_ego) and rng.random() < 0.7:
            yaw = 0.0 if speed >= 0 else math.pi
            out.append(Actor(kind, length, width, height, _colour(rng), s, d, speed, yaw))
        s += length + float(rng.uniform(6.0, 16.0))
    return out


def _pedestrians(rng: np.random.Generator, side: float, ego_s0: float) -> list[Actor]:
    """Walkers on one sidewalk in three strips: forward, backward, standing; one speed per strip."""
    strips = (
        (ROAD_HALF_WIDTH + 0.9, float(rng.uniform(0.8, 1.6)), 0.0),  # clear of the cones
        (ROAD_HALF_WIDTH + 1.75, -float(rng.uniform(0.8, 1.6)), math.pi),
        (SIDEWALK_OUTER - 0.4, 0.0, None),
    )
    out = []
    for _ in range(int(rng.integers(1, 5))):
        d, speed, yaw = strips[int(rng.integers(3))]
        s = ego_s0 + float(rng.uniform(-25.0, 30.0))
        heading = float(rng.uniform(-math.pi, math.pi)) if yaw is None else yaw
        length, width, height = _size(rng, 2)
        out.append(Actor(2, length, width, height, _colour(rng), s, side * d, speed, heading))
    return _no_overlap(out)


def _cones(rng: np.random.Generator, side: float, ego_s0: float) -> list[Actor]:
    out = []
    s = ego_s0 + float(rng.uniform(-20.0, 10.0))
    for _ in range(int(rng.integers(0, 4))):
        length, width, height = _size(rng, 3)
        d = side * (ROAD_HALF_WIDTH + 0.3)
        out.append(Actor(3, length, width, height, (240, 120, 20), s, d, 0.0, 0.0))
        s += float(rng.uniform(3.0, 6.0))
    return out


def _no_overlap(actors: list[Actor]) -> list[Actor]:
    """Drop walkers that start within 1.5 m of an earlier one (same strip, same speed: they stay
    apart for the whole clip)."""
    kept: list[Actor] = []
    for a in actors:
        if all(math.hypot(a.s0 - b.s0, a.d - b.d) > 1.5 for b in kept):
            kept.append(a)
    return kept
