"""--resume continues from OUT/checkpoint and repeats the uninterrupted run's losses exactly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import dojo.train.run as run
from dojo.errors import DojoError
from dojo.train import Progress, TrainResult, train_occupancy

from .conftest import tiny_options


class _Stop(Exception):
    pass


@pytest.fixture
def no_simulation(monkeypatch: pytest.MonkeyPatch, tiny_run: TrainResult) -> None:
    """The simulated half is the same for every run; reuse the session run's to keep this fast."""
    monkeypatch.setattr(run, "simulate_large", lambda *args, **kw: tiny_run.sim)


def _interrupt_at(step: int) -> Callable[[Progress], None]:
    def progress(event: Progress) -> None:
        if event.phase == "train" and event.step == step:
            raise _Stop
    return progress


@pytest.mark.parametrize("precision", ["fp32", "cfp8"])
def test_resume_gives_the_uninterrupted_losses(tiny_data: Path, tmp_path: Path, precision: str,
                                               no_simulation: None) -> None:
    full = train_occupancy(tiny_options(tmp_path / "full", tiny_data, steps=6,
                                        precision=precision))
    opts = tiny_options(tmp_path / "cut", tiny_data, steps=6, precision=precision)
    with pytest.raises(_Stop):
        train_occupancy(opts, _interrupt_at(4))  # checkpoints every 2 steps: saved at 4
    resumed = train_occupancy(tiny_options(tmp_path / "cut", tiny_data, steps=6,
                                           precision=precision, resume=True))
    assert len(full.history.train_loss) == 6
    assert resumed.history.train_loss == full.history.train_loss  # bit for bit
    assert resumed.history.iou_values == full.history.iou_values
    assert resumed.history.baseline_iou == full.history.baseline_iou
    assert resumed.val_iou == full.val_iou


def test_resume_refuses_other_settings_or_no_checkpoint(tiny_data: Path, tmp_path: Path,
                                                         no_simulation: None) -> None:
    train_occupancy(tiny_options(tmp_path / "a", tiny_data, steps=2))
    with pytest.raises(DojoError, match="lr"):
        train_occupancy(tiny_options(tmp_path / "a", tiny_data, steps=2, lr=0.5, resume=True))
    with pytest.raises(DojoError, match="no checkpoint"):
        train_occupancy(tiny_options(tmp_path / "b", tiny_data, resume=True))


def test_training_runs_on_the_threads_asked_whatever_the_caller_set(
        tiny_data: Path, tmp_path: Path, no_simulation: None) -> None:
    """torch's CPU kernels split reductions by thread count (measured: 30 steps at 96 x 64 end
    at loss 0.3671 on 1 thread, 0.3629 on 2), so the count is an option, not the machine's."""
    import torch

    seen: list[int] = []

    def progress(event: Progress) -> None:
        if event.phase == "train":
            seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_occupancy(tiny_options(tmp_path / "run", tiny_data, steps=2, threads=3), progress)
        assert seen == [3, 3] and torch.get_num_threads() == 1  # restored after
    finally:
        torch.set_num_threads(before)


def test_measure_decode_measures_live_and_says_so(tiny_data: Path, tmp_path: Path,
                                                  no_simulation: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """--measure-decode asks the live measurements (stubbed here) and metrics.json says
    "measured"; without it nothing is measured (the default run, `tiny_run`, says "recorded")."""
    import json

    import dojo.data.decoderate as decoderate
    import dojo.data.video as video

    asked: list[object] = []
    monkeypatch.setattr(decoderate, "measure_decode_fps_at",
                        lambda w, h, *a, **k: asked.append((w, h)) or 123.0)
    monkeypatch.setattr(video, "measure_decode_fps", lambda path, *a, **k: asked.append(path)
                        or 4567.0)
    result = train_occupancy(tiny_options(tmp_path / "run", tiny_data, steps=1,
                                          measure_decode=True))
    m = json.loads(result.files["metrics"].read_text())["data_path"]
    assert (m["decode_rates"], m["decode_fps_large"], m["decode_fps_per_core"]) == \
        ("measured", 123.0, 4567.0)
    assert asked == [(1280, 960), tiny_data / "val"]
