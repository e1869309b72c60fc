"""Scenario mix of the synthetic clips: what kind of driving, the weather and the time of day.

Each clip draws three tags from a fixed mix (probabilities below; the rare ones are what
mining is for) unless the config forces them:

- scenario: `urban` (the street of `scene.make_scene`), `highway` (18-30 m/s, more trucks, no
  pedestrians), `intersection` (ego waits at a cross street while cross traffic passes),
  `parking` (rows of parked cars at right angles, ego creeping), `pedestrian_crossing`
  (a zebra ahead with people walking across), `cut_in` (a car from the right lane moves into
  the ego lane ahead);
- weather: `clear`, `rain`, `fog`; time of day: `day`, `dusk`, `night`. They change the
  pictures only (`render.look_for`), never the geometry or the labels.

Scenes keep the invariant of `scene`: no two actors and no actor and the ego ever overlap over
the clip (lane traffic that would reach a crossing, a zebra or a cut-in is left out).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from dojo.data.scene import (
    EGO_LENGTH,
    LANE_WIDTH,
    SIDEWALK_OUTER,
    Actor,
    Road,
    Scene,
    _colour,
    _cones,
    _lane_traffic,
    _pedestrians,
    _size,
    make_scene,
)

SCENARIOS: dict[str, float] = {"urban": 0.34, "highway": 0.24, "intersection": 0.14,
                               "parking": 0.10, "pedestrian_crossing": 0.09, "cut_in": 0.09}
WEATHER: dict[str, float] = {"clear": 0.65, "rain": 0.22, "fog": 0.13}
TIME_OF_DAY: dict[str, float] = {"day": 0.62, "dusk": 0.22, "night": 0.16}
TAGS: dict[str, dict[str, float]] = {"scenario": SCENARIOS, "weather": WEATHER,
                                     "time_of_day": TIME_OF_DAY}
_CAR, _TRUCK, _WALKER = 0, 1, 2


def draw_tags(rng: np.random.Generator, forced: dict[str, str] | None = None) -> dict[str, str]:
    """Scenario, weather and time of day from the mix; a non-empty `forced[key]` wins (it is
    still drawn, so forcing one tag leaves the rest of the clip's random stream unchanged)."""
    out = {}
    for key, mix in TAGS.items():
        names = list(mix)
        weights = np.array(list(mix.values()))
        value = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        out[key] = (forced or {}).get(key) or value
    return out


def make_clip_scene(rng: np.random.Generator, frames: int, fps: float,
                    forced: dict[str, str] | None = None) -> Scene:
    """A scene with its tags (`Scene.tags`): the scenario's geometry, weather and time of day."""
    tags = draw_tags(rng, forced)
    build = _BUILDERS[tags["scenario"]]
    scene = build(rng, frames, fps)
    return dataclasses.replace(scene, tags=tuple(tags.items()))


def _duration(frames: int, fps: float) -> float:
    return (frames - 1) / fps


def _swept(a: Actor, duration: float, margin: float = 1.0) -> tuple[float, float]:
    """The arc-length interval an actor covers over the clip, with a margin (m)."""
    ends = (a.s0, a.s0 + a.speed * duration)
    reach = max(a.length, a.width) / 2 + margin
    return min(ends) - reach, max(ends) + reach


def _clear_of(actors: list[Actor], lo: float, hi: float, duration: float) -> list[Actor]:
    """Actors that never enter arc lengths [lo, hi] during the clip."""
    return [a for a in actors if not (_swept(a, duration)[1] > lo and _swept(a, duration)[0] < hi)]


def _urban(rng: np.random.Generator, frames: int, fps: float) -> Scene:
    return make_scene(rng, frames, fps)


def _highway(rng: np.random.Generator, frames: int, fps: float) -> Scene:
    curvature = 0.0 if rng.random() < 0.5 else float(rng.uniform(-1 / 600, 1 / 600))
    ego_s0, ego_speed = float(rng.uniform(-20.0, 20.0)), float(rng.uniform(18.0, 30.0))
    actors: list[Actor] = []
    for lane, speed in ((-1, ego_speed + rng.uniform(-4, 4)), (0, ego_speed),
                        (1, -rng.uniform(18.0, 30.0))):
        actors += _lane_traffic(rng, lane * LANE_WIDTH, float(speed), ego_s0, lane == 0,
                                truck_share=0.35)
    return Scene(Road(curvature), tuple(actors), ego_s0, ego_speed, fps, frames)


def _intersection(rng: np.random.Generator, frames: int, fps: float) -> Scene:
    """Ego waits (or creeps) before a cross street; cross traffic passes in both directions."""
    T = _duration(frames, fps)
    ego_s0, ego_speed = float(rng.uniform(-20.0, 20.0)), float(rng.uniform(0.0, 1.5))
    s_c = ego_s0 + EGO_LENGTH / 2 + ego_speed * T + float(rng.uniform(11.0, 18.0))
    actors: list[Actor] = []
    for lane in (-1, 0, 1):
        queue = _lane_traffic(rng, lane * LANE_WIDTH, 0.0, ego_s0, lane == 0)
        if lane == 1:
            actors += [a for a in queue if a.s0 - a.length / 2 > s_c + 6.0]
        elif lane == 0:
            actors += [a for a in queue if a.s0 + a.length / 2 < ego_s0 - EGO_LENGTH / 2 - 1.0]
        else:
            actors += [a for a in queue if a.s0 + a.length / 2 < s_c - 6.0]
    for side, sign in ((-1.75, 1.0), (1.75, -1.0)):
        speed = float(rng.uniform(5.0, 11.0))
        d = -45.0 + float(rng.uniform(0.0, 10.0))
        while d < 45.0:
            kind = _TRUCK if rng.random() < 0.15 else _CAR
            length, width, height = _size(rng, kind)
            if rng.random() < 0.6:
                actors.append(Actor(kind, length, width, height, _colour(rng), s_c + side,
                                    sign * d, 0.0, sign * math.pi / 2, sign * speed))
            d += length + float(rng.uniform(8.0, 18.0))
    for side in (-1.0, 1.0):
        actors += _clear_of(_pedestrians(rng, side, ego_s0), s_c - 12.0, s_c + 12.0, T)
        actors += _clear_of(_cones(rng, side, ego_s0), s_c - 8.0, s_c + 8.0, T)
    return Scene(Road(0.0, (("crossroad", s_c),)), tuple(actors), ego_s0, ego_speed, fps,
                 frames)


def _crossing(rng: np.random.Generator, frames: int, fps: float) -> Scene:
    """A zebra ahead with people walking across; traffic that would reach it is left out."""
    T = _duration(frames, fps)
    curvature = 0.0 if rng.random() < 0.5 else float(rng.uniform(-1 / 200, 1 / 200))
    ego_s0, ego_speed = float(rng.uniform(-20.0, 20.0)), float(rng.uniform(2.0, 6.0))
    s_z = ego_s0 + EGO_LENGTH / 2 + ego_speed * T + float(rng.uniform(7.0, 12.0))
    lanes: list[Actor] = []
    for lane, speed in ((-1, ego_speed), (0, ego_speed), (1, -rng.uniform(2.0, 6.0))):
        lanes += _lane_traffic(rng, lane * LANE_WIDTH, float(speed), ego_s0, lane == 0)
    actors = _clear_of(lanes, s_z - 3.0, s_z + 3.0, T)
    for offset, sign in ((-0.8, 1.0), (0.8, -1.0)):
        speed = float(rng.uniform(0.9, 1.5))
        starts = np.sort(rng.uniform(-8.0, 8.0, int(rng.integers(1, 5))))
        kept = [d for k, d in enumerate(starts) if k == 0 or d - starts[k - 1] > 1.2]
        for d in kept:
            length, width, height = _size(rng, _WALKER)
            actors.append(Actor(_WALKER, length, width, height, _colour(rng), s_z + offset,
                                float(sign * d), 0.0, sign * math.pi / 2, sign * speed))
    for side in (-1.0, 1.0):
        actors += _clear_of(_pedestrians(rng, side, ego_s0), s_z - 2.5, s_z + 2.5, T)
    return Scene(Road(curvature, (("zebra", s_z),)), tuple(actors), ego_s0, ego_speed, fps,
                 frames)


def _cut_in(rng: np.random.Generator, frames: int, fps: float) -> Scene:
    """A car from the right lane moves into the ego lane just ahead of the ego."""
    T = _duration(frames, fps)
    curvature = 0.0 if rng.random() < 0.5 else float(rng.uniform(-1 / 300, 1 / 300))
    ego_s0, ego_speed = float(rng.uniform(-20.0, 20.0)), float(rng.uniform(8.0, 20.0))
    length, width, height = _size(rng, _CAR)
    s0 = ego_s0 + EGO_LENGTH / 2 + float(rng.uniform(3.0, 8.0)) + length / 2
    speed = ego_speed + float(rng.uniform(0.5, 2.5))
    d_speed = min(3.0, LANE_WIDTH * float(rng.uniform(0.5, 0.9)) / max(T, 0.1))
    cutter = Actor(_CAR, length, width, height, _colour(rng), s0, -LANE_WIDTH, speed,
                   math.atan2(d_speed, speed), d_speed)
    lo, hi = _swept(cutter, T, margin=2.0)
    actors: list[Actor] = [cutter]
    for lane, v in ((-1, speed), (0, ego_speed), (1, -rng.uniform(5.0, 12.0))):
        traffic = _lane_traffic(rng, lane * LANE_WIDTH, float(v), ego_s0, lane == 0)
        actors += traffic if lane == 1 else _clear_of(traffic, lo, hi, T)
    for side in (-1.0, 1.0):
        actors += _pedestrians(rng, side, ego_s0)
    return Scene(Road(curvature), tuple(actors), ego_s0, ego_speed, fps, frames)


def _parking(rng: np.random.Generator, frames: int, fps: float) -> Scene:
    """Rows of cars parked at right angles on both sides; the ego creeps down the aisle."""
    ego_s0, ego_speed = float(rng.uniform(-20.0, 20.0)), float(rng.uniform(0.5, 2.5))
    actors: list[Actor] = []
    for side in (-1.0, 1.0):
        first = math.floor((ego_s0 - 30.0) / 2.7)
        for k in range(first, first + 24):
            if rng.random() < 0.7:
                length, width, height = _size(rng, _CAR)
                facing = math.pi / 2 if rng.random() < 0.5 else -math.pi / 2
                actors.append(Actor(_CAR, length, width, height, _colour(rng), (k + 0.5) * 2.7,
                                    side * 4.2, 0.0, facing))
        for _ in range(int(rng.integers(0, 3))):
            length, width, height = _size(rng, _WALKER)
            s = ego_s0 + float(rng.uniform(-20.0, 25.0))
            if all(abs(s - a.s0) > 1.5 for a in actors if abs(a.d - side * 7.85) < 0.1):
                actors.append(Actor(_WALKER, length, width, height, _colour(rng), s,
                                    side * (SIDEWALK_OUTER - 0.4), 0.0,
                                    float(rng.uniform(-math.pi, math.pi))))
    return Scene(Road(0.0, (("parking", 0.0),)), tuple(actors), ego_s0, ego_speed, fps, frames)


_BUILDERS = {"urban": _urban, "highway": _highway, "intersection": _intersection,
             "parking": _parking, "pedestrian_crossing": _crossing, "cut_in": _cut_in}
