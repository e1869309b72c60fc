"""On-disk layout of a clip set: manifest.json, one folder per clip with MP4s and labels.npz.

    DIR/manifest.json           format, version, fps, width, height, gop, cameras, grid, clips
    DIR/clip_0000/front.mp4     one H.264 MP4 per camera (paths in the manifest are relative)
    DIR/clip_0000/labels.npz    per-clip labels, arrays below

labels.npz arrays (T frames, N cameras, M objects, G grid cells; metres, radians, seconds):
    occupancy   (T, G, G) uint8   1 where a cell centre lies in an object footprint (ego frame)
    intrinsics  (N, 3, 3) float64 pixels, for the manifest's width and height
    extrinsics  (N, 4, 4) float64 camera-to-ego
    ego_poses   (T, 4, 4) float64 ego-to-world          (optional for user clips)
    boxes       (T, M, 7) float32 ego frame [x, y, z_centre, length, width, height, yaw] (optional)
    classes     (M,) uint8        index into `classes` of the manifest  (optional)
    timestamps  (T,) float64      seconds from clip start (optional)

`open_clips` validates a set before anything trains on it. A problem with one clip (a missing
file, an unreadable or truncated MP4, a camera count that does not match) is either raised as a
`DojoError` naming the file (policy "error") or the clip is skipped with a `SkippedClipWarning`
and recorded in `ClipSet.skipped` (policy "skip"). Labels are never guessed.
"""

from __future__ import annotations

import dataclasses
import io
import json
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dojo.config import check, load_json, parse
from dojo.data.video import VideoReader, probe
from dojo.errors import ConfigError, DojoError

FORMAT = "dojo-clips"
VERSION = 1
POLICIES = ("error", "skip")
REQUIRED_LABELS = ("occupancy", "intrinsics", "extrinsics")
# A manifest lists every clip (~300 bytes each; synth makes at most a million): reads stop here.
MAX_MANIFEST_BYTES = 512 << 20


@dataclass(frozen=True, kw_only=True)
class GridSpec:
    """BEV grid: `size` x `size` cells over x, y in [-range_m, range_m) metres."""

    size: int = dataclasses.field(metadata=check(gt=0))
    range_m: float = dataclasses.field(metadata=check(gt=0, unit="m"))


@dataclass(frozen=True, kw_only=True)
class ClipEntry:
    """One clip of the manifest: camera name -> MP4 path, labels path (relative to the set)."""

    name: str
    frames: int = dataclasses.field(metadata=check(gt=0))
    videos: dict[str, str]
    labels: str
    tags: dict[str, str] = dataclasses.field(default_factory=dict)  # scenario, weather, ...


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """The parsed manifest.json; `fps` in frames/s, `width`/`height` in pixels."""

    format: str = dataclasses.field(metadata=check(choices=(FORMAT,)))
    version: int = dataclasses.field(metadata=check(ge=1, le=VERSION))
    fps: float = dataclasses.field(metadata=check(gt=0, unit="frames/s"))
    width: int = dataclasses.field(metadata=check(gt=0, unit="pixels"))
    height: int = dataclasses.field(metadata=check(gt=0, unit="pixels"))
    gop: int = dataclasses.field(default=0, metadata=check(ge=0, unit="frames"))
    cameras: tuple[str, ...]
    grid: GridSpec
    clips: tuple[ClipEntry, ...]
    classes: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class SkippedClip:
    """A clip left out under policy "skip": the file at fault and why."""

    clip: str
    file: str
    reason: str


class SkippedClipWarning(UserWarning):
    """Warned once per clip that `open_clips` leaves out under policy "skip"."""


@dataclass(frozen=True)
class Clip:
    """A validated clip: video locations (absolute paths, or fsspec URLs for a set given by
    URL) in manifest camera order, labels in memory."""

    name: str
    frames: int
    videos: tuple[Path | str, ...]
    labels: dict[str, np.ndarray]


@dataclass(frozen=True)
class ClipSet:
    """A validated clip set: the manifest, the usable clips, and the ones skipped."""

    root: Path | str  # a local folder or an fsspec URL
    manifest: Manifest
    clips: tuple[Clip, ...]
    skipped: tuple[SkippedClip, ...]


def read_manifest(root: Path | str) -> Manifest:
    """Parse DIR/manifest.json (DIR a folder or an fsspec URL); any structural problem is a
    `ConfigError` naming the file."""
    path = _at(root, "manifest.json")
    if not _is_file(path):
        raise DojoError(f"{path}: no manifest (expected a clip set made by `dojo data synth` "
                        "or a manifest.json in the same layout)")
    try:
        raw = _read_bytes(path, MAX_MANIFEST_BYTES)
    except OSError as err:
        raise DojoError(f"{path}: cannot read ({err.strerror or err})") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise DojoError(f"{path}: over {MAX_MANIFEST_BYTES:,} bytes: expected a manifest "
                        "(a million clips take about 300 MB)")
    data = load_json(raw, str(path))
    manifest = parse(Manifest, data, str(path))
    if not manifest.cameras or len(set(manifest.cameras)) != len(manifest.cameras):
        raise ConfigError(str(path), "cameras", list(manifest.cameras), "distinct camera names")
    return manifest


def open_clips(root: str | Path, policy: str = "error", verify: bool = False) -> ClipSet:
    """Read and validate the clip set at `root` under `policy` ("error" or "skip").

    Checks each clip's camera list, that every file exists, label shapes, and each MP4's header
    (size, frame count); `verify=True` also decodes every frame (slow, thorough).
    """
    if policy not in POLICIES:
        raise ConfigError("--policy", "policy", policy, f"one of {', '.join(POLICIES)}")
    root = str(root).rstrip("/") if "://" in str(root) else Path(root)
    manifest = read_manifest(root)
    clips, skipped = [], []
    for entry in manifest.clips:
        try:
            clips.append(_check_clip(root, manifest, entry, verify))
        except _ClipProblem as problem:
            if policy == "error":
                raise DojoError(f"{problem.file}: {problem.reason}") from None
            skip = SkippedClip(entry.name, str(problem.file), problem.reason)
            warnings.warn(f"skipping clip {entry.name}: {skip.file}: {skip.reason}",
                          SkippedClipWarning, stacklevel=2)
            skipped.append(skip)
    return ClipSet(root, manifest, tuple(clips), tuple(skipped))


def _at(root: Path | str, rel: str) -> Path | str:
    """A manifest path: relative to the set, or absolute (a path, or an fsspec URL)."""
    if "://" in rel:
        return rel
    if isinstance(root, Path):
        return root / rel
    from dojo.data import store

    joined = store.join(root, rel)
    return joined if "://" in joined else Path(joined)  # an absolute local path stays local


def _is_file(path: Path | str) -> bool:
    if isinstance(path, Path):
        return path.is_file()
    from dojo.data import store

    fs, inner = store.resolve(path)
    return bool(fs.isfile(inner))


def _read_bytes(path: Path | str, limit: int | None = None) -> bytes:
    """The file's bytes; with `limit`, at most `limit` + 1 of them (more means too large)."""
    if isinstance(path, Path):
        if limit is None:
            return path.read_bytes()
        with path.open("rb") as f:
            return f.read(limit + 1)
    from dojo.data import store

    try:
        return store.read_bytes(path, limit)
    except DojoError as err:
        raise OSError(str(err).removeprefix(f"{path}: ")) from None


class _ClipProblem(Exception):
    def __init__(self, file: Path | str, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = file, reason


def _check_clip(root: Path | str, m: Manifest, entry: ClipEntry, verify: bool) -> Clip:
    manifest_path = _at(root, "manifest.json")
    if set(entry.videos) != set(m.cameras):
        missing = sorted(set(m.cameras) - set(entry.videos))
        extra = sorted(set(entry.videos) - set(m.cameras))
        raise _ClipProblem(manifest_path, f"clip {entry.name} lists {len(entry.videos)} videos "
                           f"for {len(m.cameras)} cameras (missing {missing}, extra {extra})")
    videos = tuple(_at(root, entry.videos[cam]) for cam in m.cameras)
    for path in (*videos, _at(root, entry.labels)):
        if not _is_file(path):
            raise _ClipProblem(path, f"file of clip {entry.name} in the manifest does not exist")
    labels = _check_labels(_at(root, entry.labels), m, entry.frames)
    for path in videos:
        _check_video(path, m, entry.frames, verify)
    return Clip(entry.name, entry.frames, videos, labels)


def _check_video(path: Path | str, m: Manifest, frames: int, verify: bool) -> None:
    try:
        info = probe(path)
        if (info.width, info.height) != (m.width, m.height):
            raise _ClipProblem(path, f"video is {info.width}x{info.height}, manifest says "
                               f"{m.width}x{m.height}")
        if info.fps and abs(info.fps - m.fps) > 1e-3 * m.fps:
            raise _ClipProblem(path, f"video runs at {info.fps:g} frames/s, manifest says "
                               f"{m.fps:g} (frame k is read at time k / fps)")
        if info.frames < frames:
            raise _ClipProblem(path, f"video has {info.frames} frames, manifest says {frames}")
        if verify:
            VideoReader(path, m.fps).read(0, frames)
    except DojoError as err:
        raise _ClipProblem(path, str(err).removeprefix(f"{path}: ")) from None


def _check_labels(path: Path | str, m: Manifest, frames: int) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(_read_bytes(path)), allow_pickle=False) as z:
            labels = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise _ClipProblem(path, f"cannot read labels ({err})") from None
    g, n = m.grid.size, len(m.cameras)
    want = {"occupancy": (frames, g, g), "intrinsics": (n, 3, 3), "extrinsics": (n, 4, 4)}
    for key, shape in want.items():
        if key not in labels:
            raise _ClipProblem(path, f"labels lack '{key}' (have {sorted(labels)})")
        if labels[key].shape != shape:
            raise _ClipProblem(path, f"labels '{key}' have shape {labels[key].shape}, expected "
                               f"{shape} ({n} cameras, {frames} frames, grid {g})")
    occ = labels["occupancy"]
    if occ.dtype != np.uint8 or occ.max(initial=0) > 1:
        raise _ClipProblem(path, "labels 'occupancy' must be uint8 0/1")
    if not all(np.isfinite(labels[k]).all() for k in ("intrinsics", "extrinsics")):
        raise _ClipProblem(path, "labels 'intrinsics'/'extrinsics' hold non-finite values")
    return labels


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a compressed .npz whose bytes depend only on the arrays (fixed zip timestamps)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Write `manifest` (a plain mapping in the Manifest layout) as DIR/manifest.json."""
    text = json.dumps(manifest, indent=1) + "\n"
    (root / "manifest.json").write_text(text, encoding="utf-8")
