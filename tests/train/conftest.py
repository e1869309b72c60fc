"""Tiny clip sets and one tiny training run, shared by the dojo.train tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from dojo.data.synth import SynthConfig, synthesize
from dojo.train import TrainOptions, TrainResult, train_occupancy

TINY = dict(clips=2, cameras=2, frames=4, width=32, height=32, grid=8, range_m=16.0)


def make_sets(root: Path) -> Path:
    """root/train (seed 0) and root/val (seed 1): 2 clips each, 2 cameras, 4 frames, 32 x 32."""
    for name, seed in (("train", 0), ("val", 1)):
        synthesize(root / name, SynthConfig(seed=seed, **TINY))  # type: ignore[arg-type]
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only train/val pair; tests that damage files copy it first."""
    return make_sets(tmp_path_factory.mktemp("train-data") / "data")


def tiny_options(out: Path, data: Path, **changes: object) -> TrainOptions:
    values: dict[str, object] = dict(out=str(out), data=str(data), steps=4, batch_size=2,
                                     eval_every=2, checkpoint_every=2, warmup=1, channels=4)
    values.update(changes)
    return TrainOptions(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """One complete tiny run (simulation included); its files are in `result.files`."""
    out = tmp_path_factory.mktemp("train-run") / "run"
    return train_occupancy(tiny_options(out, tiny_data))
