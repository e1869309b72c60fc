"""Everything `dojo train` can check before its first expensive step, checked first.

`preflight(options)` reads but never writes: the output folder, the data folder and its clip
sets, the system, the plan and its precision, the batch against the training windows, and the
checkpoint to resume. It returns a `Job` saying where things go and what must be made. Then the
job simulates (which checks the plan against the model, seconds), and only then creates folders,
synthesizes clips and trains (minutes).

Data folder semantics (docs/train.md):
- no `--data`: OUT/../data; missing `train/` or `val/` sets are synthesized there;
- `--data DIR`: DIR must hold both sets; a missing one (or a missing DIR) is an error naming the
  path, unless `--synth` asks to synthesize the missing sets there;
- either way a `train/` or `val/` that exists without a manifest is not a clip set: an error, and
  nothing is written over it. A missing set is synthesized like its sibling (cameras, frames,
  size, grid, rate) when the sibling exists, so the two always match.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dojo.data.layout import Manifest, read_manifest
from dojo.data.synth import SynthConfig
from dojo.data.video import GOP
from dojo.errors import ConfigError, DojoError
from dojo.hardware.loader import host_count, load_system
from dojo.hardware.spec import SystemSpec
from dojo.paths import can_create_in, nearest_existing, not_a_folder
from dojo.train import checkpoint
from dojo.train.options import TrainOptions

SETS = ("train", "val")
_MATCH = ("cameras", "width", "height", "grid")  # what the held-out set must share


@dataclass(frozen=True)
class Job:
    """Where a checked run goes: OUT, the data root, sets to synthesize (name -> config), the
    training windows expected (exact for existing sets before bad clips are skipped), and the
    checkpoint state to resume from (None when not resuming)."""

    out: Path
    data_root: Path
    synth: dict[str, SynthConfig]
    train_windows: int
    resume_state: dict[str, Any] | None
    slices: dict[str, Any] | None = None  # parsed --slices file (None: one per tag value)
    catalog: Path | None = None  # the run's catalog (None: OUT/catalog)
    train_set: Any = None  # `trainset.TrainSet` of --train-set (None: DATA/train)
    train_dir: Path | str | None = None  # the set trained on, once known (None: DATA/train)
    data_url: str = ""  # --data as an fsspec URL (then `data_root` is unused): sets read there


def preflight(opts: TrainOptions) -> Job:
    """Check the options against the file system and the system files; writes nothing."""
    out = check_out(opts.out)
    check_system(opts.system)
    check_plan(opts.plan, opts.precision)
    if opts.measure_decode:  # the probe clips are written there after training
        from dojo.data.decoderate import default_cache_dir

        _check_writable(default_cache_dir(), "DOJO_CACHE")
    url = opts.data if "://" in opts.data else ""  # Path() would make "s3://b/x" "s3:/b/x"
    root = Path(opts.data) if opts.data and not url else out.parent / "data"  # unused for URLs
    if opts.catalog and not (opts.train_set and opts.catalog.strip()):  # else ignored, or ' '
        raise ConfigError("--catalog", "catalog", opts.catalog, "a catalog folder that holds the "
                          "--train-set version, given with --train-set (the run's own catalog "
                          "is OUT/catalog)")
    train_set = None
    if opts.train_set:
        from dojo.train.trainset import resolve

        train_set = resolve(opts.train_set, opts.catalog, out, opts.window)
    wanted = ("val",) if train_set else SETS
    manifests = _url_sets(url, opts, wanted) if url else \
        _existing_sets(root, bool(opts.data) and not opts.synth, wanted)
    if train_set:
        manifests["train"] = train_set.manifest
    if manifests.keys() == set(SETS):
        check_alike(url or root, manifests["train"], manifests["val"],
                    (opts.train_set, "") if train_set else ("", ""))
    synth = {name: _synth_config(opts, name, manifests) for name in SETS if name not in manifests}
    if synth:
        _check_writable(root, "--data" if opts.data else "--out")
    windows = (train_set.windows if train_set else _windows(manifests["train"], opts.window)
               if "train" in manifests
               else synth["train"].clips * max(0, synth["train"].frames - opts.window + 1))
    check_batch(opts.batch_size, windows, opts.train_set if train_set else
                f"{url}/train" if url else root / "train")
    state = checkpoint.load(out / "checkpoint", opts.settings()) if opts.resume else None
    slices = None
    if opts.slices:
        from dojo.data.query import load_slices

        slices = load_slices(opts.slices)
    return Job(out=out, data_root=root, synth=synth, train_windows=windows, resume_state=state,
               slices=slices, train_set=train_set, data_url=url)


def check_out(text: str) -> Path:
    """OUT as a path: not empty, not an existing file, and creatable/writable by this user."""
    if not text.strip():
        raise ConfigError("--out", "out", text, "a folder path (an empty one would write into "
                          "the current folder)")
    if "://" in text:  # Path() would make "s3://b/x" a local "s3:/b/x" folder
        raise ConfigError("--out", "out", text, "a local folder (the run's checkpoint, catalog "
                          "and report are written locally; only clip sets are read from URLs)")
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise DojoError(f"{out}: exists and is not a folder; --out expects a folder to write "
                        "report.html, trace.json, metrics.json and checkpoint/ into")
    if (out / "manifest.json").is_file():  # the run's catalog/ would merge into the set's own
        raise ConfigError("--out", "out", text, "a run folder, not a clip set (it holds "
                          "manifest.json; the run writes catalog/, checkpoint/ and a report)")
    _check_writable(out, "--out")
    return out


def _check_writable(folder: Path, flag: str) -> None:
    """`folder` exists as a writable folder, or its nearest existing ancestor is one."""
    probe = nearest_existing(folder)
    if not probe.is_dir():
        raise DojoError(f"{folder}: cannot create it, '{probe}' is {not_a_folder(probe)} "
                        f"({flag} expects a folder path)")
    if not can_create_in(probe):
        raise DojoError(f"{folder}: cannot write there, '{probe}' is not writable ({flag})")


def check_system(name: str) -> SystemSpec:
    """The Dojo system to simulate: it must have hosts and DIPs, which feed its input."""
    spec = load_system(name)
    if spec.host is None or spec.dip is None or host_count(spec) == 0:
        raise ConfigError("--system", "system", name, "a Dojo system with hosts and DIPs to "
                          "feed it (v1, cabinet, exapod): the job simulates its data path")
    return spec


def check_plan(text: str, precision: str) -> None:
    """`auto`, or a plan that parses and whose `precision=`, if any, is the run's."""
    if text == "auto":
        return
    from dojo.plan.plan import parse_plan

    plan = parse_plan(text)
    if "precision=" in text and plan.precision != precision:
        raise ConfigError("--plan", "precision", plan.precision,
                          f"{precision}, the precision of the run (--precision)")


def check_batch(batch: int, windows: int, where: Path | str) -> None:
    """One step trains on at most every window of the set: a larger batch is refused."""
    if windows < 1:
        raise DojoError(f"{where}: no training windows (clips shorter than the window, or "
                        "every clip skipped)")
    if batch > windows:
        raise ConfigError("--batch", "batch_size", batch, f"at most {windows}, the training "
                          f"windows in {where} (a step would train on {windows}, not {batch})")


def check_alike(root: Path | str, train: Manifest, val: Manifest,
                sets: tuple[str, str] = ("", "")) -> None:
    """The held-out set must have the training set's cameras, frame size and grid (the
    sets are ROOT/train and ROOT/val unless `sets` names them)."""
    from dojo.data.store import join

    train_at, val_at = (str(s) or join(str(root), n) for s, n in zip(sets, SETS, strict=True))
    for key in _MATCH:
        want, got = getattr(train, key), getattr(val, key)
        if want != got:
            shown = (list(want), list(got)) if key == "cameras" else (want, got)
            raise DojoError(f"{join(val_at, 'manifest.json')}: {key} = {shown[1]!r}, expected "
                            f"{shown[0]!r} as in {join(train_at, 'manifest.json')} (held-out "
                            "clips must come from the same cameras, frame size and grid)")


def _url_sets(url: str, opts: TrainOptions, sets: tuple[str, ...]) -> dict[str, Manifest]:
    """Manifests of `sets` at URL/NAME, read through fsspec; nothing is made at a URL."""
    if opts.synth:
        raise ConfigError("--synth", "synth", True, f"a local --data folder ({url} is a URL; "
                          "clip sets are synthesized locally, then copied where they belong)")
    if opts.measure_decode:
        raise ConfigError("--measure-decode", "measure_decode", True, "local clips (the rate "
                          f"is measured on local files; --data {url} is a URL)")
    from dojo.data import store

    found = {}
    for name in sets:
        folder = store.join(url, name)
        if not store.exists(store.join(folder, "manifest.json")):
            raise DojoError(f"{folder}: no clip set there (--data {url} must hold train/ and "
                            "val/ clip sets; nothing is synthesized at a URL)")
        found[name] = read_manifest(folder)
    return found


def _existing_sets(root: Path, must_exist: bool, sets: tuple[str, ...] = SETS
                   ) -> dict[str, Manifest]:
    """Manifests of `sets` under `root`; errors for anything that is not a clip set."""
    if root.exists() and not root.is_dir():
        raise DojoError(f"{root}: is a file; --data expects a folder with train/ and val/")
    if (root / "manifest.json").is_file():
        raise DojoError(f"{root}: is one clip set; --data expects a folder with train/ and val/ "
                        "clip sets (held-out clips must be separate)")
    found = {}
    for name in sets:
        folder = root / name
        if (folder / "manifest.json").is_file():
            found[name] = read_manifest(folder)
        elif folder.exists() and not (folder.is_dir() and not any(folder.iterdir())):
            raise DojoError(f"{folder}: not a clip set (no manifest.json, see docs/data.md); "
                            "move it away or point --data at another folder")
        elif must_exist:
            raise DojoError(f"{folder}: no clip set there (--data {root} must hold train/ and "
                            "val/ made by `dojo data synth`; add --synth to synthesize them)")
    return found


def _synth_config(opts: TrainOptions, name: str, found: dict[str, Manifest]) -> SynthConfig:
    clips, seed = (opts.train_clips, opts.seed) if name == "train" else \
        (opts.val_clips, opts.seed + 1)
    if not found:
        return SynthConfig(clips=clips, seed=seed)
    m = next(iter(found.values()))
    cfg = SynthConfig(clips=clips, seed=seed, cameras=min(6, len(m.cameras)),
                      frames=min(c.frames for c in m.clips), width=m.width, height=m.height,
                      grid=m.grid.size, range_m=m.grid.range_m, fps=m.fps,
                      gop=m.gop or GOP)
    from dojo.data.geometry import make_rig

    names = [c.name for c in make_rig(cfg.cameras, cfg.width, cfg.height)]
    if names != list(m.cameras):
        raise DojoError(f"{opts.data or 'data'}/{name}: missing, and a synthesized set would have "
                        f"cameras {names}, not {list(m.cameras)} as its sibling set: give both "
                        "train/ and val/")
    return cfg


def _windows(m: Manifest, window: int) -> int:
    """Training windows (stride 1) of the manifest's clips, before bad clips are skipped."""
    return sum(max(0, c.frames - window + 1) for c in m.clips)
