"""A small numpy ray caster: ground plane with road markings, boxes, sky.

One ray per pixel centre. The nearest hit of the ground plane (z = 0) and every box (slab test)
wins, so occlusion is exact; box faces are shaded by a fixed sun direction so a box's faces differ
in brightness, and everything fades into haze with distance. Geometry is exact to the pixel; the
images are not meant to be pretty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dojo.data.geometry import pixel_rays
from dojo.data.scene import LANE_WIDTH, ROAD_HALF_WIDTH, SIDEWALK_OUTER, Road

_SUN = np.array([0.35, 0.25, 0.9]) / np.linalg.norm([0.35, 0.25, 0.9])
_ASPHALT, _SIDEWALK, _GRASS = (85.0, 85.0, 92.0), (165.0, 160.0, 155.0), (70.0, 115.0, 50.0)
_PAINT = np.array([235.0, 235.0, 225.0])
_SKY_TOP = (90.0, 135.0, 205.0)


@dataclass(frozen=True)
class Look:
    """How the light and the air change a picture (never the geometry): `light` scales every
    lit surface, `haze` is the colour far things fade into over `haze_m` metres (63 %), the sky
    runs from `haze` at the horizon to `sky_top`, and `rain` is the fraction of pixels crossed
    by a bright streak (a different pattern each frame)."""

    light: float = 1.0
    haze: tuple[float, float, float] = (190.0, 200.0, 215.0)
    haze_m: float = 70.0
    sky_top: tuple[float, float, float] = _SKY_TOP
    rain: float = 0.0


DAY = Look()
_TIME = {"day": DAY,
         "dusk": Look(light=0.55, haze=(190.0, 130.0, 100.0), sky_top=(70.0, 60.0, 120.0)),
         "night": Look(light=0.16, haze=(22.0, 24.0, 34.0), haze_m=45.0,
                       sky_top=(4.0, 5.0, 14.0))}


def look_for(weather: str, time_of_day: str) -> Look:
    """The look of a clip's tags: time of day sets light and colours, weather thickens the air
    (fog: 63 % gone at 14 m; rain: at 35 m, 25 % darker, 1.5 % of pixels streaked)."""
    base = _TIME.get(time_of_day, DAY)
    if weather == "fog":
        grey = tuple(0.5 * c + 0.5 * 200.0 * base.light for c in base.haze)
        return Look(light=base.light * 0.9, haze=grey, haze_m=14.0, sky_top=grey)  # type: ignore[arg-type]
    if weather == "rain":
        dull = tuple(c * 0.75 for c in base.haze)
        return Look(light=base.light * 0.75, haze=dull, haze_m=35.0,  # type: ignore[arg-type]
                    sky_top=tuple(c * 0.6 for c in base.haze), rain=0.015)  # type: ignore[arg-type]
    return base


def render_view(
    road: Road,
    cam_to_world: np.ndarray,
    K: np.ndarray,
    width: int,
    height: int,
    boxes: np.ndarray,
    colours: np.ndarray,
    look: Look = DAY,
    frame: int = 0,
) -> np.ndarray:
    """Render one camera: (height, width, 3) uint8 RGB.

    `cam_to_world` is 4x4 (OpenCV camera frame to world), `boxes` (M, 7) world-frame boxes
    [x, y, z_centre, length, width, height, yaw], `colours` (M, 3) RGB 0..255; `look` the
    light and weather, `frame` the frame index (the rain pattern moves with it).
    """
    R, origin = cam_to_world[:3, :3], cam_to_world[:3, 3]
    dirs = pixel_rays(K, width, height) @ R.T  # (P, 3) world directions, unit length
    t_ground = np.where(dirs[:, 2] < -1e-9, -origin[2] / np.minimum(dirs[:, 2], -1e-9), np.inf)
    t_box, box_rgb = _boxes(origin, dirs, boxes, colours)
    rgb = _sky(dirs, look)
    ground = np.isfinite(t_ground) & (t_ground < t_box)
    hit_pts = origin + dirs[ground] * t_ground[ground, None]
    rgb[ground] = _fog(_ground_colour(road, hit_pts[:, 0], hit_pts[:, 1]) * look.light,
                       t_ground[ground], look)
    on_box = np.isfinite(t_box) & ~ground
    rgb[on_box] = _fog(box_rgb[on_box] * look.light, t_box[on_box], look)
    if look.rain > 0:
        rgb = _rain(rgb.reshape(height, width, 3), look, frame).reshape(-1, 3)
    return np.clip(rgb, 0, 255).round().astype(np.uint8).reshape(height, width, 3)


def _rain(rgb: np.ndarray, look: Look, frame: int) -> np.ndarray:
    """Brighten short vertical streaks (4 pixels) at a hashed `look.rain` fraction of columns
    and rows, a new pattern each frame."""
    h, w, _ = rgb.shape
    v, u = np.meshgrid(np.arange(h) // 4, np.arange(w), indexing="ij")  # (H, W)
    key = (u * 73856093) ^ (v * 19349663) ^ (frame * 83492791)
    streak = (key % 1000) < look.rain * 1000
    out = rgb.copy()
    out[streak] = 0.5 * out[streak] + 0.5 * np.array([210.0, 215.0, 225.0]) * max(look.light, 0.4)
    return out


def _boxes(origin: np.ndarray, dirs: np.ndarray, boxes: np.ndarray,
           colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest box hit distance per ray (inf where none) and the shaded colour there."""
    n = len(dirs)
    t_best = np.full(n, np.inf)
    rgb = np.zeros((n, 3))
    forward = dirs.mean(axis=0)  # roughly the optical axis: used to cull boxes behind it
    for box, colour in zip(boxes, colours, strict=True):
        x, y, z, length, width, height, yaw = box
        radius = 0.5 * float(np.linalg.norm(box[3:6]))
        if (np.array([x, y, z]) - origin) @ forward < -radius:
            continue  # wholly behind the camera: no ray with positive depth can reach it
        c, s = np.cos(yaw), np.sin(yaw)
        Rb = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])  # box-to-world rotation
        o = Rb.T @ (origin - np.array([x, y, z]))  # (3,) ray origin in the box frame
        d = dirs @ Rb  # (P, 3) = (Rb.T @ dirs.T).T
        half = np.array([length, width, height]) / 2
        safe = np.where(np.abs(d) < 1e-12, 1e-12, d)
        t1, t2 = (-half - o) / safe, (half - o) / safe  # (P, 3)
        t_min, t_max = np.minimum(t1, t2), np.maximum(t1, t2)
        # column-wise max/min: numpy's reduce over a length-3 axis is several times slower
        t_near = np.maximum(np.maximum(t_min[:, 0], t_min[:, 1]), t_min[:, 2])
        t_far = np.minimum(np.minimum(t_max[:, 0], t_max[:, 1]), t_max[:, 2])
        hit = (t_near <= t_far) & (t_near > 0) & (t_near < t_best)
        if not hit.any():
            continue
        axis = t_min[hit].argmax(axis=1)  # the slab entered last is the face hit
        normal = np.zeros((int(hit.sum()), 3))
        normal[np.arange(len(axis)), axis] = -np.sign(d[hit, axis])
        shade = 0.45 + 0.55 * np.clip((normal @ Rb.T) @ _SUN, 0.0, 1.0)
        t_best[hit] = t_near[hit]
        rgb[hit] = np.asarray(colour, np.float64) * shade[:, None]
    return t_best, rgb


def _sky(dirs: np.ndarray, look: Look = DAY) -> np.ndarray:
    """Vertical gradient from the haze at the horizon to `sky_top` overhead: (P, 3) RGB."""
    up = np.clip(dirs[:, 2], 0.0, 1.0)[:, None]
    return np.array(look.haze) * (1 - up) + np.array(look.sky_top) * up


def _fog(rgb: np.ndarray, dist: np.ndarray, look: Look = DAY) -> np.ndarray:
    a = np.exp(-dist / look.haze_m)[:, None]
    return rgb * a + np.array(look.haze) * (1 - a)


def _ground_colour(road: Road, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Road, lane paint, sidewalk and grass by road coordinates, with a world-fixed texture."""
    s, d = road.to_road(x, y)
    ad = np.abs(d)
    rgb = np.where((ad < ROAD_HALF_WIDTH)[:, None], _ASPHALT,
                   np.where((ad < SIDEWALK_OUTER)[:, None], _SIDEWALK, _GRASS))
    # 1 m cells of slightly different brightness give the network texture to track motion.
    ix, iy = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    noise = ((ix * 73856093) ^ (iy * 19349663)) % 17 - 8
    rgb = rgb + noise[:, None]
    dash = (np.abs(ad - LANE_WIDTH / 2) < 0.075) & (np.mod(s, 6.0) < 3.0)
    edge = np.abs(ad - (ROAD_HALF_WIDTH - 0.15)) < 0.1
    paint = dash | edge
    for kind, at in road.features:
        if kind == "crossroad":  # a 10 m cross street: paved across, no lane paint on it
            across = np.abs(s - at) < 5.0
            rgb = np.where(across[:, None], _ASPHALT + noise[:, None], rgb)
            paint &= ~across
        elif kind == "zebra":  # 0.5 m stripes across the road, 4 m deep
            paint |= (np.abs(s - at) < 2.0) & (ad < ROAD_HALF_WIDTH) & (np.mod(d, 1.0) < 0.5)
        elif kind == "parking":  # paved to the outer sidewalk edge, stall lines every 2.7 m
            rgb = np.where((ad < SIDEWALK_OUTER)[:, None], _ASPHALT + noise[:, None], rgb)
            paint = (ad > 1.8) & (ad < 6.6) & (np.mod(s, 2.7) < 0.1)
    return np.where(paint[:, None], _PAINT, rgb)
