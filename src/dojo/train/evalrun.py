"""A finished run, reloaded: `dojo eval RUN --slices FILE` and the model that mining scores with.

`load_run(RUN)` reads RUN/checkpoint/state.pt (saved by every `dojo train occupancy` run since
the catalog: it carries the run's options), rebuilds the model it trained, and finds its data
folder the way the run did (`--data`, else RUN/../data). The held-out set and the catalog
(RUN/catalog, written by the run) are the run's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dojo.config import parse
from dojo.data import ClipLoader, LoaderConfig, store
from dojo.errors import DojoError
from dojo.train import checkpoint
from dojo.train.loop import make_model, model_overrides
from dojo.train.options import TrainOptions
from dojo.train.slices import clip_counts, slice_ious

VAL_BATCH = 8


@dataclass(frozen=True)
class LoadedRun:
    """A run's options, trained model (eval mode), data folder and catalog."""

    options: TrainOptions
    model: torch.nn.Module
    data_root: Path | str  # a folder, or the fsspec URL the run read its sets from
    catalog: str

    @property
    def val(self) -> Path | str:
        """The run's held-out set."""
        return _val_of(self.data_root)


def _val_of(data_root: Path | str) -> Path | str:
    return f"{data_root}/val" if isinstance(data_root, str) else data_root / "val"


def load_run(run: str | Path) -> LoadedRun:
    """The trained model of RUN; a missing folder or checkpoint is one DojoError."""
    if not str(run).strip():
        raise DojoError("RUN is empty (expected the --out folder of `dojo train`)")
    run = Path(run)
    if not run.is_dir():
        raise DojoError(f"{run}: no such run folder (expected the --out of `dojo train`)")
    if not (run / "checkpoint" / checkpoint.STATE).is_file():
        raise DojoError(f"{run}: not a finished training run (no checkpoint/{checkpoint.STATE}; "
                        "expected the --out folder of `dojo train occupancy`)")
    state = checkpoint.load(run / "checkpoint", {})
    if "options" not in state:
        raise DojoError(f"{run / 'checkpoint' / checkpoint.STATE}: saved before runs recorded "
                        "their options; train it again to evaluate it by slice")
    opts = parse(TrainOptions, state["options"], str(run / "checkpoint"))
    data_root: Path | str = opts.data.rstrip("/") if "://" in opts.data else \
        Path(opts.data) if opts.data else run.parent / "data"
    catalog = str(run / "catalog")
    val_at = _val_of(data_root)
    if not store.exists(store.join(str(val_at), "manifest.json")):
        raise DojoError(f"{val_at}: the run's held-out set is not there any more")
    val = ClipLoader(val_at, LoaderConfig(batch_size=VAL_BATCH, window=opts.window,
                                                     stride=opts.window, shuffle=False,
                                                     policy="skip"))
    manifest = val.dataset.clipset.manifest
    overrides = model_overrides(manifest, opts.window, opts.channels, opts.lr)
    model, _, _ = make_model(overrides, opts.precision, opts.seed)
    model.load_state_dict(state["model"])
    model.eval()
    return LoadedRun(opts, model, data_root, catalog)


def evaluate_run(run: str | Path, slices: dict[str, Any] | None) -> dict[str, Any]:
    """{"slices": IoU per slice with intervals, "val_iou"} of RUN's model on its held-out set."""
    loaded = load_run(run)
    opts = loaded.options
    threads = torch.get_num_threads()
    torch.set_num_threads(opts.threads)
    try:
        val = ClipLoader(loaded.val, LoaderConfig(
            batch_size=VAL_BATCH, window=opts.window, stride=opts.window, shuffle=False,
            policy="skip"))
        batches = [b for b in val if b["frames"].shape[0]]
        counts = clip_counts(loaded.model, batches)
    finally:
        torch.set_num_threads(threads)
    names = [c.name for c in val.dataset.clipset.clips]
    by_slice = slice_ious(loaded.catalog, loaded.val, names, counts, slices,
                          opts.seed)
    inter = sum(c[0] for c in counts.values())
    union = sum(c[1] for c in counts.values())
    return {"val_iou": 1.0 if union == 0 else inter / union, "slices": by_slice}
