"""`train_occupancy(options)`: the whole `dojo train occupancy` job, from data to report.

0. every option checked against the file system and the system files (`preflight`), then the
   large preset simulated (`simulated`, seconds; checks the plan), before anything is written;
1. data: OUT/../data/{train,val} (or `--data`), synthesized when missing (see `preflight`);
   bad clips are an error naming the file or are skipped, warned about and counted;
2. the model that matches the clips, under the precision policy; IoU of the untrained model;
3. training with a checkpoint every `checkpoint_every` steps (and at the end), resumable;
4. held-out IoU; the decode rates (recorded, or measured with `measure_decode`: `decode`);
5. OUT/report.html, OUT/trace.json, OUT/metrics.json, OUT/bev.png (`report`).
Progress goes to the caller's `progress` callback; nothing is printed here.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from dojo.data import ClipLoader, LoaderConfig, synthesize
from dojo.data.catalog import index_set, write_version
from dojo.data.layout import SkippedClip
from dojo.errors import DojoError
from dojo.hardware.spec import SystemSpec
from dojo.numerics import load_policy_state, policy_state
from dojo.train import checkpoint
from dojo.train.decode import DecodeRate, data_rate, large_rate
from dojo.train.loop import (
    Example,
    batches,
    evaluate,
    lr_at,
    make_model,
    model_overrides,
    train_step,
)
from dojo.train.options import Progress, TrainOptions
from dojo.train.preflight import Job, check_alike, check_batch, preflight
from dojo.train.simulated import SimulatedRun, large_config, simulate_large
from dojo.train.slices import clip_counts, slice_ious

ProgressFn = Callable[[Progress], None]
EXAMPLES = 3  # held-out samples drawn in the report
VAL_BATCH = 8


@dataclass
class History:
    """What the run has learned so far; saved in every checkpoint."""

    train_loss: list[float] = field(default_factory=list)
    iou_steps: list[int] = field(default_factory=list)
    iou_values: list[float] = field(default_factory=list)
    baseline_iou: float = math.nan
    train_s: float = 0.0  # wall seconds spent in training steps, over every session
    samples: int = 0


@dataclass(frozen=True)
class TrainResult:
    """A finished run: its options, history, held-out IoU, pictures, simulation and files."""

    options: TrainOptions
    history: History
    val_iou: float
    examples: list[Example]
    skipped: list[SkippedClip]
    train_samples: int
    sim: SimulatedRun
    decode: tuple[DecodeRate, DecodeRate]  # at the data set's frame size, at the large preset's
    overrides: dict[str, Any]
    files: dict[str, Path]
    dataset: dict[str, str] = field(default_factory=dict)  # set -> dataset version ID
    slices: dict[str, dict[str, Any]] = field(default_factory=dict)  # `train.slices`
    rounds: list[dict[str, Any]] = field(default_factory=list)  # `train.rounds` (--rounds > 1)
    model: Any = field(default=None, repr=False)  # the trained model (mining scores with it)
    # {held-out clip name: [intersection, union]}: what rounds compare with the previous round
    counts: dict[str, list[int]] = field(default_factory=dict, repr=False)


def ensure_data(job: Job, progress: ProgressFn) -> tuple[Path | str, Path | str]:
    """job.data_root/train and /val, the missing ones synthesized (`preflight` decided which);
    URL/train and URL/val for `--data URL` (read through fsspec, never made there)."""
    if job.data_url:
        return f"{job.data_url.rstrip('/')}/train", f"{job.data_url.rstrip('/')}/val"
    for name, cfg in job.synth.items():
        def tick(done: int, total: int, name: str = name) -> None:
            progress(Progress("data", f"making {name} clips {done}/{total}"))

        synthesize(job.data_root / name, cfg, tick, catalog="")
    return job.data_root / "train", job.data_root / "val"


def catalog_sets(dirs: tuple[Path | str, Path | str], catalog: Path, progress: ProgressFn
                 ) -> dict[str, str]:
    """Index the training and held-out sets into `catalog` (OUT/catalog: the run's own, so the
    data folder is only read) and record each as a dataset version; returns {set: version ID}."""
    versions = {}
    for name, folder in zip(("train", "val"), dirs, strict=True):
        progress(Progress("data", f"cataloguing {name} clips"))
        indexed = index_set(str(folder), str(catalog), name)
        versions[name] = write_version(str(catalog), indexed.clips, note=f"{name} set").id
    return versions


def _loaders(train_dir: Path | str, val_dir: Path | str, opts: TrainOptions
             ) -> tuple[ClipLoader, ClipLoader]:
    train = ClipLoader(train_dir, LoaderConfig(batch_size=opts.batch_size, window=opts.window,
                                               stride=1, seed=opts.seed, policy=opts.policy))
    val = ClipLoader(val_dir, LoaderConfig(batch_size=VAL_BATCH, window=opts.window,
                                           stride=opts.window, shuffle=False, policy=opts.policy))
    check_alike("", train.dataset.clipset.manifest, val.dataset.clipset.manifest,
                (str(train_dir), str(val_dir)))
    # Skipped clips may leave fewer windows than preflight counted from the manifest.
    check_batch(opts.batch_size, len(train.dataset), train_dir)
    return train, val


def _state(model: Any, optimizer: Any, loader: ClipLoader, history: History,
           opts: TrainOptions) -> dict[str, Any]:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(), "loader": loader.state_dict(),
            "policy": policy_state(model), "history": history,
            "settings": opts.settings(), "options": dataclasses.asdict(opts)}


def _restore(state: dict[str, Any], model: Any, optimizer: Any, loader: ClipLoader) -> History:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    loader.load_state_dict(state["loader"])
    load_policy_state(model, state["policy"])
    history: History = state["history"]
    return history


def _train(model: Any, optimizer: Any, loss_fn: Any, loader: ClipLoader,
           val_batches: list[dict[str, Any]], history: History, opts: TrainOptions,
           folder: Path, progress: ProgressFn) -> None:
    stream = batches(loader)
    session_start, session_samples = time.perf_counter(), 0
    first = len(history.train_loss)
    for session_steps, step in enumerate(range(first, opts.steps), start=1):
        batch = next(stream)
        start = time.perf_counter()
        lr = lr_at(step, opts.steps, opts.lr, opts.warmup)
        history.train_loss.append(train_step(model, optimizer, loss_fn, batch, lr))
        history.train_s += time.perf_counter() - start
        history.samples += int(batch["frames"].shape[0])
        session_samples += int(batch["frames"].shape[0])
        done = step + 1
        if done % opts.eval_every == 0 or done == opts.steps:
            history.iou_steps.append(done)
            history.iou_values.append(evaluate(model, val_batches)[0])
        if done % opts.checkpoint_every == 0 or done == opts.steps:
            checkpoint.save(folder, _state(model, optimizer, loader, history, opts))
        elapsed = time.perf_counter() - session_start
        rate = session_samples / elapsed if elapsed > 0 else 0.0
        progress(Progress("train", step=done, steps=opts.steps, loss=history.train_loss[-1],
                          samples_per_s=rate,
                          eta_s=elapsed / session_steps * (opts.steps - done)))


def train_occupancy(opts: TrainOptions, progress: ProgressFn | None = None,
                    system: SystemSpec | None = None) -> TrainResult:
    """Run the whole job (module docstring); returns the result, files already written.

    torch runs on `opts.threads` CPU threads for the job (restored after): its kernels split
    reductions by thread count, so the losses depend on it in the last bits. `system`, when
    given, is the spec the large preset is simulated on instead of `opts.system` (a service
    job's tile partition); `opts.system` is still checked by preflight."""
    from dojo.train.report import write_outputs

    tell = progress or (lambda _: None)
    job = preflight(opts)  # every cheap check, before anything is made or written
    target = system or opts.system
    tell(Progress("simulate", f"simulating occupancy-large on "
                              f"{system.name if system else opts.system} and H100s"))
    cfg = large_config()
    large = large_rate((cfg.width, cfg.height), opts.measure_decode)
    sim = simulate_large(target, opts.plan, opts.precision, large.frames_per_s)
    _make_folder(job.out, "--out")
    train_dir, val_dir = ensure_data(job, tell)
    if job.train_set is not None:  # --train-set: a version or a set folder, not DATA/train
        from dojo.train.trainset import materialize

        where = materialize(job.train_set, job.out)
        train_dir = where if "://" in where else Path(where)
        job = replace(job, train_dir=train_dir)
    versions = catalog_sets((train_dir, val_dir), job.out / "catalog", tell)
    if job.slices and any(round(sl.weight) > 1 for sl in job.slices.values()):
        from dojo.train.rounds import weighted_set

        train_dir = weighted_set(str(job.out / "catalog"), versions["train"], job.slices,
                                 job.out / "weighted" / "train")
    threads = torch.get_num_threads()
    torch.set_num_threads(opts.threads)
    try:
        result = _learn(job, opts, (train_dir, val_dir), sim, large, tell)
    finally:
        torch.set_num_threads(threads)
    result = replace(result, dataset=versions)
    if opts.rounds > 1:
        from dojo.train.rounds import run_rounds

        def learn(round_job: Job, round_train: Path) -> TrainResult:
            torch.set_num_threads(opts.threads)
            try:
                _make_folder(round_job.out, "--out")
                out = _learn(round_job, opts, (round_train, val_dir), sim, large, tell)
            finally:
                torch.set_num_threads(threads)
            return out

        result = replace(result, rounds=run_rounds(job, opts, val_dir, result, learn, tell))
    tell(Progress("report", f"writing {job.out}"))
    return replace(result, files=write_outputs(result, job.out))


def _learn(job: Job, opts: TrainOptions, dirs: tuple[Path | str, Path | str], sim: SimulatedRun,
           large: DecodeRate, tell: ProgressFn) -> TrainResult:
    """Model, baseline, training, held-out IoU and decode rates; the result without files."""
    train_dir, val_dir = dirs
    loader, val_loader = _loaders(train_dir, val_dir, opts)
    manifest = loader.dataset.clipset.manifest
    overrides = model_overrides(manifest, opts.window, opts.channels, opts.lr)
    model, optimizer, loss_fn = make_model(overrides, opts.precision, opts.seed)
    tell(Progress("eval", "decoding held-out clips"))
    val_batches = [b for b in val_loader if b["frames"].shape[0]]
    if not val_batches:
        raise DojoError(f"{val_dir}: no usable held-out samples (every clip was skipped)")
    if job.resume_state is not None:
        history = _restore(job.resume_state, model, optimizer, loader)
    else:
        torch.manual_seed(opts.seed)
        history = History(baseline_iou=evaluate(model, val_batches)[0])
    _train(model, optimizer, loss_fn, loader, val_batches, history, opts,
           job.out / "checkpoint", tell)
    tell(Progress("eval", "held-out IoU"))
    val_iou, examples = evaluate(model, val_batches, EXAMPLES)
    names = [c.name for c in val_loader.dataset.clipset.clips]
    counts = clip_counts(model, val_batches)
    by_slice = slice_ious(str(job.catalog or job.out / "catalog"), val_dir, names, counts,
                          job.slices, opts.seed)
    data_fps = data_rate((manifest.width, manifest.height), opts.measure_decode, val_dir)
    skipped = list(dict.fromkeys([*loader.skipped, *val_loader.skipped]))
    return TrainResult(options=opts, history=history, val_iou=val_iou, examples=examples,
                       skipped=skipped, train_samples=len(loader.dataset),
                       sim=replace(sim, epoch_samples=len(loader.dataset)),
                       decode=(data_fps, large), overrides=overrides, files={},
                       slices=by_slice, model=model,
                       counts={names[i]: c for i, c in counts.items()})


def _make_folder(folder: Path, flag: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DojoError(f"{folder}: cannot create the folder ({err.strerror}; {flag})") from None
