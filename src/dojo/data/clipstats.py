"""Facts about one clip for the catalog, computed from its files (never from the generator).

- `codec_facts(data)`: what the encoded MP4 says, demuxed with PyAV (packets, keyframes, bytes,
  bitrate, bits per pixel) plus the mean luma (0..255) of its first frame, decoded;
- `label_problem(labels, ...)`: why a clip's labels contradict themselves (a mislabelled clip),
  or None: frame count, class indices, and the occupancy grid against the boxes it came from;
- `frame_rows` / `object_rows`: per-frame ego speed and occupancy, per-object class, size,
  distance and occlusion.

Occlusion of an object in a frame is the fraction of 9 points of its box (centre and the 8
corners pulled 20 % toward it) that no camera sees: a point is seen by a camera when it lies in
front of it, inside its image, and the segment to it crosses no other box (slab test). An
object's occlusion is the mean over the frames where it lies inside the grid's range.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from dojo.data.scene import occupancy

_CORNERS = np.array([[0, 0, 0]] + [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1)
                                     for sz in (-1, 1)], np.float64) * 0.8  # (9, 3) of half-size
MISMATCH_CELLS = 0.01  # occupancy cells (fraction of the grid) that may differ from the boxes


def codec_facts(data: bytes) -> dict[str, Any]:
    """Codec statistics of an encoded video (bytes of the file); raises av errors."""
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        cc = stream.codec_context
        width, height = int(cc.width), int(cc.height)
        sizes, keys = [], 0
        for packet in container.demux(stream):
            if packet.size:
                sizes.append(packet.size)
                keys += bool(packet.is_keyframe)
        rate = float(stream.average_rate or 0)
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        first = next(iter(container.decode(stream)))
        luma = float(first.to_ndarray(format="gray").mean())
    frames = len(sizes)
    bits = 8.0 * sum(sizes)
    seconds = frames / rate if rate else math.nan
    return {"codec": cc.name, "pix_fmt": str(cc.pix_fmt), "width": width, "height": height,
            "frames": frames, "keyframes": keys, "bytes": len(data),
            "bitrate_bps": bits / seconds if seconds else math.nan,
            "bits_per_pixel": bits / max(1, frames * width * height), "mean_luma": luma}


def label_problem(labels: dict[str, np.ndarray], frames: int, grid: int, range_m: float,
                  classes: int) -> str | None:
    """Why the labels contradict themselves (a mislabelled clip), or None when consistent."""
    occ = labels["occupancy"]
    boxes, kinds = labels.get("boxes"), labels.get("classes")
    if boxes is None or kinds is None:
        return None
    if boxes.ndim != 3 or boxes.shape[0] != frames or boxes.shape[2] != 7:
        return f"labels 'boxes' have shape {boxes.shape}, expected ({frames}, M, 7)"
    if kinds.shape != (boxes.shape[1],):
        return f"labels 'classes' have shape {kinds.shape}, expected ({boxes.shape[1]},) " \
               "(one class per box)"
    if classes and len(kinds) and int(kinds.max()) >= classes:
        return f"labels 'classes' hold index {int(kinds.max())}, the manifest has {classes} classes"
    if not np.isfinite(boxes).all():
        return "labels 'boxes' hold non-finite values"
    allowed = max(1, int(MISMATCH_CELLS * grid * grid))
    for k in range(frames):
        diff = int((occupancy(boxes[k].astype(np.float64), grid, range_m) != occ[k]).sum())
        if diff > allowed:
            return f"labels 'occupancy' of frame {k} differ from its boxes in {diff} cells " \
                   f"(at most {allowed} allowed)"
    return None


def ego_speeds(poses: np.ndarray | None, fps: float) -> np.ndarray:
    """(T,) ego speed (m/s) from ego-to-world poses; the last frame repeats the one before;
    NaN without poses."""
    if poses is None or len(poses) < 2:
        return np.full(0 if poses is None else len(poses), math.nan)
    step = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1) * fps  # (T-1,)
    return np.append(step, step[-1])


def frame_rows(clip: str, labels: dict[str, np.ndarray], fps: float, range_m: float
               ) -> dict[str, list[Any]]:
    """Columns of the frames table for one clip."""
    occ = labels["occupancy"]
    t = len(occ)
    speeds = ego_speeds(labels.get("ego_poses"), fps)
    if not len(speeds):
        speeds = np.full(t, math.nan)
    stamps = labels.get("timestamps", np.arange(t) / fps)
    boxes = labels.get("boxes")
    near = [int(_in_range(boxes[k], range_m).sum()) if boxes is not None else 0
            for k in range(t)]
    return {"clip_hash": [clip] * t, "frame": list(range(t)),
            "timestamp_s": [float(x) for x in stamps], "ego_speed_mps": [float(x) for x in speeds],
            "occupied_cells": [int(occ[k].sum()) for k in range(t)], "objects_in_range": near}


def object_rows(clip: str, labels: dict[str, np.ndarray], class_names: tuple[str, ...],
                range_m: float, width: int, height: int) -> dict[str, list[Any]]:
    """Columns of the objects table for one clip (empty without boxes and classes)."""
    cols: dict[str, list[Any]] = {k: [] for k in ("clip_hash", "object", "class", "length_m",
                                                  "width_m", "height_m", "min_distance_m",
                                                  "frames_in_range", "occlusion")}
    boxes, kinds = labels.get("boxes"), labels.get("classes")
    if boxes is None or kinds is None or not boxes.shape[1]:
        return cols
    boxes = boxes.astype(np.float64)  # (T, M, 7)
    inside = np.stack([_in_range(b, range_m) for b in boxes])  # (T, M)
    hidden = np.stack([occlusion(b, labels["intrinsics"], labels["extrinsics"], width, height)
                       for b in boxes])  # (T, M)
    dist = np.hypot(boxes[:, :, 0], boxes[:, :, 1])  # (T, M)
    for j in range(boxes.shape[1]):
        seen = inside[:, j]
        name = class_names[kinds[j]] if kinds[j] < len(class_names) else str(int(kinds[j]))
        cols["clip_hash"].append(clip)
        cols["object"].append(j)
        cols["class"].append(name)
        for key, col in (("length_m", 3), ("width_m", 4), ("height_m", 5)):
            cols[key].append(float(boxes[0, j, col]))
        cols["min_distance_m"].append(float(dist[:, j].min()))
        cols["frames_in_range"].append(int(seen.sum()))
        cols["occlusion"].append(float(hidden[seen, j].mean()) if seen.any() else math.nan)
    return cols


def _in_range(boxes: np.ndarray, range_m: float) -> np.ndarray:
    return (np.abs(boxes[:, 0]) < range_m) & (np.abs(boxes[:, 1]) < range_m)


def occlusion(boxes: np.ndarray, K: np.ndarray, E: np.ndarray, width: int, height: int
              ) -> np.ndarray:
    """(M,) fraction of each box's 9 sample points that no camera sees (module docstring).
    `boxes` (M, 7) in the ego frame, `K` (N, 3, 3), `E` (N, 4, 4) camera-to-ego."""
    m = len(boxes)
    if not m:
        return np.zeros(0)
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    half = boxes[:, 3:6] / 2  # (M, 3)
    local = _CORNERS[None] * half[:, None]  # (M, 9, 3)
    pts = np.empty_like(local)
    pts[..., 0] = boxes[:, None, 0] + c[:, None] * local[..., 0] - s[:, None] * local[..., 1]
    pts[..., 1] = boxes[:, None, 1] + s[:, None] * local[..., 0] + c[:, None] * local[..., 1]
    pts[..., 2] = boxes[:, None, 2] + local[..., 2]
    flat = pts.reshape(-1, 3)  # (P, 3), P = 9 M
    owner = np.repeat(np.arange(m), 9)
    seen = np.zeros(len(flat), bool)
    for cam in range(len(K)):
        seen |= _seen_from(flat, owner, boxes, K[cam], E[cam], width, height)
    return 1.0 - seen.reshape(m, 9).mean(axis=1)


def _seen_from(pts: np.ndarray, owner: np.ndarray, boxes: np.ndarray, K: np.ndarray,
               E: np.ndarray, width: int, height: int) -> np.ndarray:
    """(P,) points in front of the camera, inside its image, with no other box in the way."""
    cam = (pts - E[:3, 3]) @ E[:3, :3]  # (P, 3) camera frame = R^T (p - t)
    z = cam[:, 2]
    uv = cam @ K.T  # (P, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = uv[:, 0] / z, uv[:, 1] / z
    ok = (z > 0.1) & (u >= -0.5) & (u <= width - 0.5) & (v >= -0.5) & (v <= height - 0.5)
    origin = E[:3, 3]
    seg = pts - origin  # (P, 3): t in (0, 1) along it
    for i, box in enumerate(boxes):
        x, y, zc, length, w, h, yaw = box
        cy, sy = math.cos(yaw), math.sin(yaw)
        rot = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])  # box-to-ego
        o = rot.T @ (origin - np.array([x, y, zc]))
        d = seg @ rot  # (P, 3)
        half = np.array([length, w, h]) / 2
        safe = np.where(np.abs(d) < 1e-12, 1e-12, d)
        t1, t2 = (-half - o) / safe, (half - o) / safe
        near = np.minimum(t1, t2).max(axis=1)
        far = np.maximum(t1, t2).min(axis=1)
        blocked = (near <= far) & (near > 1e-6) & (near < 1.0 - 1e-6) & (owner != i)
        ok &= ~blocked
    return ok
