"""`dojo data synth`: deterministic synthetic multi-camera driving clips with ground truth.

Clip i of seed S is a pure function of (S, i) and the config: its scene comes from
`numpy.random.default_rng([S, i])`, its pixels from the ray caster, its labels from the scene.
The set is written into a temporary sibling folder and renamed into place at the end, so an
interrupted run leaves no half-written set behind.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dojo.config import check
from dojo.data.geometry import Camera, make_rig
from dojo.data.layout import FORMAT, VERSION, write_manifest, write_npz
from dojo.data.render import look_for, render_view
from dojo.data.scenario import SCENARIOS, TIME_OF_DAY, WEATHER, make_clip_scene
from dojo.data.scene import CLASS_NAMES, Scene, boxes_world, ego_pose, occupancy, to_ego
from dojo.data.video import CRF, GOP, encode_mp4
from dojo.errors import ConfigError, DojoError
from dojo.paths import dangling_link

Progress = Callable[[int, int], None]
ViewProgress = Callable[[int, int, int], None]  # (clip index, frame, camera), counted from 0
MAX_CLIPS = 1_000_000        # a million clips is days of rendering; more is a typo
MAX_FRAMES = 100_000         # frames per clip (about 3 hours at 10 frames/s)
MAX_CLIP_BYTES = 4 * 2**30   # RGB frames and occupancy grids of one clip, held while rendering
# The work of a set, in pixels rendered plus occupancy cells labelled (each costs about the same
# few microseconds of numpy here): at most a million clips of the default size (8 frames of
# 6 x 96 x 64 pixels and a 32 x 32 grid), as MAX_CLIPS bounds the count.
MAX_SET_UNITS = MAX_CLIPS * 8 * (6 * 96 * 64 + 32 * 32)
# A clip whose frames each hold more units than this reports each camera's view as it renders
# it (a view is at most 4096 x 4096 pixels, under a minute on one core; a frame of 6 such views
# and a clip of many frames would leave minutes between progress lines).
VIEW_PROGRESS_UNITS = 2**20


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    """What `dojo data synth` makes: sizes in pixels, range in metres, rate in frames/s."""

    clips: int = dataclasses.field(default=4, metadata=check(gt=0, le=MAX_CLIPS))
    cameras: int = dataclasses.field(default=6, metadata=check(ge=1, le=6))
    frames: int = dataclasses.field(default=8, metadata=check(gt=0, le=MAX_FRAMES))
    width: int = dataclasses.field(default=96, metadata=check(ge=16, le=4096, unit="pixels"))
    height: int = dataclasses.field(default=64, metadata=check(ge=16, le=4096, unit="pixels"))
    seed: int = dataclasses.field(default=0, metadata=check(ge=0, le=2**63 - 1))  # as train's
    grid: int = dataclasses.field(default=32, metadata=check(gt=0, le=4096, unit="cells"))
    range_m: float = dataclasses.field(default=16.0, metadata=check(gt=0, unit="m"))
    fps: float = dataclasses.field(default=10.0, metadata=check(gt=0, le=240, unit="frames/s"))
    gop: int = dataclasses.field(default=GOP, metadata=check(gt=0, unit="frames"))
    crf: int = dataclasses.field(default=CRF, metadata=check(ge=0, le=51))
    # "" draws each clip's tag from the mix of `dojo.data.scenario`; a name forces it
    scenario: str = dataclasses.field(default="", metadata=check(choices=("", *SCENARIOS)))
    weather: str = dataclasses.field(default="", metadata=check(choices=("", *WEATHER)))
    time_of_day: str = dataclasses.field(default="", metadata=check(choices=("", *TIME_OF_DAY)))

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if value % 2:
                raise ConfigError("dojo data synth", name, value,
                                  "an even number of pixels (H.264 yuv420p halves chroma)")
        self._check_work()

    @property
    def frame_units(self) -> int:
        """Pixels rendered plus occupancy cells labelled per frame of a clip."""
        return self.cameras * self.width * self.height + self.grid * self.grid

    def _check_work(self) -> None:
        """A clip is held in memory (its RGB frames and its occupancy grids, 1 B a cell) before
        encoding, and the set's work is bounded by MAX_SET_UNITS: refuse either bound passed,
        with the arithmetic."""
        frame_bytes = self.cameras * self.width * self.height * 3 + self.grid * self.grid
        clip_bytes = self.frames * frame_bytes
        if clip_bytes > MAX_CLIP_BYTES:
            raise ConfigError("dojo data synth", "frames", self.frames,
                              f"at most {MAX_CLIP_BYTES // frame_bytes} at {self.cameras} "
                              f"cameras x {self.width} x {self.height} and a {self.grid} x "
                              f"{self.grid} grid (a clip is held in memory: {self.frames} x "
                              f"({self.cameras} x {self.width} x {self.height} x 3 B + "
                              f"{self.grid} x {self.grid} B) = {clip_bytes / 2**30:.3g} GiB > "
                              f"{MAX_CLIP_BYTES // 2**30} GiB)")
        clip_units = self.frames * self.frame_units
        if self.clips * clip_units > MAX_SET_UNITS:
            raise ConfigError("dojo data synth", "clips", self.clips,
                              f"at most {MAX_SET_UNITS // clip_units:,} clips of "
                              f"{self.frames} frames x ({self.cameras} x {self.width} x "
                              f"{self.height} pixels + {self.grid} x {self.grid} cells) (a set "
                              f"renders at most {MAX_SET_UNITS:,} pixels and cells: a million "
                              "clips of the default size)")


def clip_scene(cfg: SynthConfig, index: int) -> Scene:
    """The scene of clip `index`: a function of (cfg.seed, index, frames, fps) and the forced
    tags only; its tags (scenario, weather, time of day) are in `Scene.tags`."""
    forced = {"scenario": cfg.scenario, "weather": cfg.weather, "time_of_day": cfg.time_of_day}
    return make_clip_scene(np.random.default_rng([cfg.seed, index]), cfg.frames, cfg.fps, forced)


def render_clip(scene: Scene, rig: tuple[Camera, ...], grid: int, range_m: float,
                on_view: Callable[[int, int], None] | None = None
                ) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Pixels and labels of one clip: per camera (T, H, W, 3) uint8, and the labels.npz arrays;
    `on_view(k, c)` is called once frame k of camera c is rendered."""
    colours = np.array([a.colour for a in scene.actors], dtype=np.float64).reshape(-1, 3)
    tags = dict(scene.tags)
    look = look_for(tags.get("weather", "clear"), tags.get("time_of_day", "day"))
    poses = np.stack([ego_pose(scene, k) for k in range(scene.frames)])  # (T, 4, 4)
    views = [np.empty((scene.frames, c.height, c.width, 3), np.uint8) for c in rig]
    boxes, occ = [], []
    for k in range(scene.frames):
        world = boxes_world(scene, k)
        for c, (cam, frames) in enumerate(zip(rig, views, strict=True)):
            frames[k] = render_view(scene.road, poses[k] @ cam.E, cam.K, cam.width, cam.height,
                                    world, colours, look, k)
            if on_view is not None:
                on_view(k, c)
        ego = to_ego(world, poses[k])
        boxes.append(ego)
        occ.append(occupancy(ego, grid, range_m))
    labels = {
        "occupancy": np.stack(occ),
        "intrinsics": np.stack([c.K for c in rig]),
        "extrinsics": np.stack([c.E for c in rig]),
        "ego_poses": poses,
        "boxes": np.stack(boxes).astype(np.float32).reshape(scene.frames, -1, 7),
        "classes": np.array([a.kind for a in scene.actors], dtype=np.uint8),
        "timestamps": np.arange(scene.frames, dtype=np.float64) / scene.fps,
    }
    return views, labels


def synthesize(out: str | Path, cfg: SynthConfig, progress: Progress | None = None,
               force: bool = False, catalog: str | None = None, split: str = "",
               view_progress: ViewProgress | None = None) -> Path:
    """Write a clip set to `out` (a new or empty folder; `force` replaces an existing one) and
    index it into `catalog` (None: OUT/catalog; "": no catalog) under `split` (default: OUT's
    name), `dojo.data.catalog`. `progress(done, total)` is called after each clip, and
    `view_progress(clip, frame, camera)` after each camera's view of a clip whose frames hold
    more than VIEW_PROGRESS_UNITS pixels and cells. Returns the
    manifest path.
    """
    if "://" in str(out):  # Path() would make it a local "s3:/bucket" folder
        raise DojoError(f"{out}: expected a local folder for the clip set (clips are written "
                        "locally; --catalog may be a URL)")
    out = Path(out)
    if not out.name:  # '' or '/': the set would land beside the current folder or at the root
        raise DojoError(f"'{out}': expected the path of a folder to create for the clip set")
    if out.exists() and not out.is_dir():
        raise DojoError(f"{out}: is a file; expected a folder for the clip set")
    if (target := dangling_link(out)) is not None:
        raise DojoError(f"{out}: a symbolic link to {target!r}, which does not exist; expected "
                        "a folder for the clip set, or a new path")
    if out.exists() and any(out.iterdir()) and not force:
        raise DojoError(f"{out}: already exists and is not empty (pass --force to replace it)")
    _check_catalog_apart(out, catalog, cfg.clips)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as err:
        raise DojoError(f"{out}: cannot create the clip set there ({err.strerror}: "
                        f"{err.filename})") from None
    try:
        _write_set(tmp, cfg, progress, view_progress)
        _replace(tmp, out)
    except OSError as err:  # full disk, a folder made read-only meanwhile: one line, no set
        shutil.rmtree(tmp, ignore_errors=True)
        raise DojoError(f"{out}: cannot write the clip set ({err.strerror})") from None
    except BaseException:  # Ctrl-C, SIGTERM (the CLI turns it into KeyboardInterrupt)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if catalog != "":
        from dojo.data.catalog import index_set

        index_set(str(out), catalog or "", split)
    return out / "manifest.json"


def _write_set(root: Path, cfg: SynthConfig, progress: Progress | None,
               view_progress: ViewProgress | None = None) -> None:
    rig = make_rig(cfg.cameras, cfg.width, cfg.height)
    entries = []
    for i in range(cfg.clips):
        name = f"clip_{i:04d}"
        (root / name).mkdir()
        scene = clip_scene(cfg, i)
        on_view = None
        if view_progress is not None and cfg.frame_units > VIEW_PROGRESS_UNITS:
            on_view = functools.partial(view_progress, i)
        views, labels = render_clip(scene, rig, cfg.grid, cfg.range_m, on_view)
        for cam, frames in zip(rig, views, strict=True):
            encode_mp4(root / name / f"{cam.name}.mp4", frames, cfg.fps, cfg.gop, cfg.crf)
        write_npz(root / name / "labels.npz", labels)
        entries.append({"name": name, "frames": cfg.frames,
                        "videos": {c.name: f"{name}/{c.name}.mp4" for c in rig},
                        "labels": f"{name}/labels.npz", "tags": dict(scene.tags)})
        if progress is not None:
            progress(i + 1, cfg.clips)
    write_manifest(root, {
        "format": FORMAT, "version": VERSION, "fps": cfg.fps, "width": cfg.width,
        "height": cfg.height, "gop": cfg.gop, "cameras": [c.name for c in rig],
        "grid": {"size": cfg.grid, "range_m": cfg.range_m}, "classes": list(CLASS_NAMES),
        "seed": cfg.seed, "clips": entries,
    })


def _check_catalog_apart(out: Path, catalog: str | None, clips: int) -> None:
    """Refuse, before any clip is made, a local catalog in the set folder itself or in one of
    its clip folders, where `index_set` would refuse it only after the set was written."""
    if not catalog or "://" in catalog:
        return
    where = os.path.realpath(catalog)
    folders = {os.path.realpath(out)}
    folders |= {os.path.realpath(out / f"clip_{i:04d}") for i in range(clips)}
    if where in folders:
        raise ConfigError("--catalog", "catalog", catalog, f"a folder apart from the clip files "
                          f"of {out} (the default is {out / 'catalog'})")


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished set into place; an old set is removed only after the new one is in."""
    if not out.exists():
        tmp.rename(out)
        return
    trash = out.parent / f".{out.name}.old-{os.getpid()}"
    out.rename(trash)
    tmp.rename(out)
    shutil.rmtree(trash, ignore_errors=True)
