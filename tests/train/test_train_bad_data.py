"""Bad clips: skipped with a warning and counted in the report, or an error naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import dojo.train.run as run
from dojo.data import SkippedClipWarning
from dojo.data.synth import SynthConfig, synthesize
from dojo.errors import DojoError
from dojo.train import TrainResult, train_occupancy

from .conftest import TINY, tiny_options


@pytest.fixture
def damaged(tiny_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the data with a truncated MP4 in training clip 1; returns (root, the file)."""
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    bad = root / "train" / "clip_0001" / "front.mp4"
    bad.write_bytes(bad.read_bytes()[:300])
    return root, bad


@pytest.fixture
def no_simulation(monkeypatch: pytest.MonkeyPatch, tiny_run: TrainResult) -> None:
    monkeypatch.setattr(run, "simulate_large", lambda *args, **kw: tiny_run.sim)


def test_bad_clip_is_skipped_warned_and_counted(damaged: tuple[Path, Path], tmp_path: Path,
                                                no_simulation: None) -> None:
    root, bad = damaged
    with pytest.warns(SkippedClipWarning, match="clip_0001"):
        result = train_occupancy(tiny_options(tmp_path / "run", root, steps=2, batch_size=1))
    assert [(s.clip, s.file) for s in result.skipped] == [("clip_0001", str(bad))]
    # One usable 4-frame clip left, one window (stride 1, window 4).
    assert result.train_samples == 1
    report = result.files["report"].read_text(encoding="utf-8")
    assert "1 clips skipped" in report and str(bad) in report
    assert json.loads(result.files["metrics"].read_text())["steps"] == 2


def test_bad_clip_under_policy_error_names_the_file(damaged: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    root, bad = damaged
    with pytest.raises(DojoError, match=str(bad)):
        train_occupancy(tiny_options(tmp_path / "run", root, policy="error"))


def test_held_out_set_with_other_cameras_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny_data / "train", root / "train")
    synthesize(root / "val", SynthConfig(seed=1, **{**TINY, "cameras": 3}))  # type: ignore[arg-type]
    with pytest.raises(DojoError, match=str(root / "val" / "manifest.json")) as err:
        train_occupancy(tiny_options(tmp_path / "run", root))
    # What was expected and what was found, checked before anything is written.
    assert "cameras = ['front', 'front_left', 'front_right'], expected ['front', 'front_left']" \
        in str(err.value)
    assert not (tmp_path / "run").exists()


def test_held_out_set_with_renamed_cameras_names_both_lists(tiny_data: Path,
                                                           tmp_path: Path) -> None:
    """The old code opened the renamed set clip by clip, skipped every clip ("lists 2 videos
    for 2 cameras") and then said only "0 usable clips"."""
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    manifest = root / "val" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["cameras"] = ["rear", "side"]
    manifest.write_text(json.dumps(data))
    with pytest.raises(DojoError) as err:
        train_occupancy(tiny_options(tmp_path / "run", root))
    message = str(err.value)
    assert "usable clips" not in message and str(manifest) in message
    assert "['rear', 'side']" in message and "['front', 'front_left']" in message


def test_data_folder_that_is_one_clip_set_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(DojoError, match="train/ and val/"):
        train_occupancy(tiny_options(tmp_path / "run", tiny_data / "train"))
    assert not (tiny_data / "train" / "train").exists()  # nothing written into the user's set
