"""`dojo train` checks every option before its first expensive step, and writes nothing when one
is wrong: each case is refused in one line (exit 2) before data synthesis, simulation or training,
and leaves no folder behind. Reproductions from issue 14 (items 5, 7, 8)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

import dojo.train.run as run
from dojo.cli.main import main
from dojo.train.preflight import preflight

from .conftest import tiny_options


@pytest.fixture
def nothing_expensive(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulation and synthesis fail the test if reached: every refusal must come first."""
    def reached(*args: object, **kw: object) -> None:
        raise AssertionError("an expensive step ran before the options were checked")

    monkeypatch.setattr(run, "simulate_large", reached)
    monkeypatch.setattr(run, "synthesize", reached)


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    start = time.perf_counter()
    assert main(["train", "occupancy", *argv]) == 2
    assert time.perf_counter() - start < 5.0  # refused at once, not after minutes of work
    err = capsys.readouterr().err.strip()
    assert err.startswith("dojo: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_system_without_a_data_path_is_refused_first(tmp_path: Path, nothing_expensive: None,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(["--system", "a100-cluster", "--out", str(tmp_path / "runs" / "a")], capsys)
    assert "--system" in err and "a100-cluster" in err and "hosts and DIPs" in err
    assert not (tmp_path / "runs").exists()  # no run folder, no OUT/../data


def test_mistyped_data_folder_is_an_error_not_a_new_data_set(
        tiny_data: Path, tmp_path: Path, nothing_expensive: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    typo = tmp_path / "dtaa"
    err = _refused(["--data", str(typo), "--out", str(tmp_path / "run")], capsys)
    assert str(typo / "train") in err and "--synth" in err
    assert not typo.exists() and not (tmp_path / "run").exists()


def test_synth_flag_makes_the_missing_sets_in_the_given_folder(tmp_path: Path) -> None:
    opts = tiny_options(tmp_path / "run", tmp_path / "new-data", synth=True)
    job = preflight(opts)
    assert sorted(job.synth) == ["train", "val"] and job.data_root == tmp_path / "new-data"
    assert (job.synth["train"].seed, job.synth["val"].seed) == (0, 1)
    assert not (tmp_path / "new-data").exists()  # preflight only decides


def test_missing_held_out_set_is_made_like_the_training_set(tiny_data: Path,
                                                           tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny_data / "train", root / "train")
    job = preflight(tiny_options(tmp_path / "run", root, synth=True))
    cfg = job.synth["val"]
    assert list(job.synth) == ["val"]
    # conftest.TINY: 2 cameras, 4 frames of 32 x 32, grid 8 over 16 m
    assert (cfg.cameras, cfg.frames, cfg.width, cfg.height, cfg.grid, cfg.range_m) == \
        (2, 4, 32, 32, 8, 16.0)


def test_folder_without_manifest_names_it_and_offers_no_force(
        tmp_path: Path, nothing_expensive: None, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    (root / "train" / "notes.txt").write_text("mine")
    err = _refused(["--data", str(root), "--synth", "--out", str(tmp_path / "run")], capsys)
    assert str(root / "train") in err and "manifest" in err and "--force" not in err
    assert (root / "train" / "notes.txt").read_text() == "mine"


def test_batch_larger_than_the_training_windows_is_refused(
        tiny_data: Path, tmp_path: Path, nothing_expensive: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    # conftest.TINY: 2 training clips of 4 frames, windows of 4 frames at stride 1 -> 2 windows.
    err = _refused(["--data", str(tiny_data), "--batch", "1000", "--out",
                    str(tmp_path / "run")], capsys)
    assert "--batch" in err and "1000" in err and "at most 2" in err


def test_batch_is_checked_against_the_sets_to_synthesize(tmp_path: Path) -> None:
    # Defaults: 32 training clips of 8 frames, windows of 4 -> 32 x 5 = 160 windows.
    from dojo.errors import ConfigError
    from dojo.train import TrainOptions

    with pytest.raises(ConfigError, match="at most 160"):
        preflight(TrainOptions(out=str(tmp_path / "runs" / "demo"), batch_size=161))
    assert preflight(TrainOptions(out=str(tmp_path / "runs" / "demo"), batch_size=160)) \
        .train_windows == 160


@pytest.mark.parametrize("kind", ["empty", "file", "under a file"])
def test_unusable_out_is_refused_before_anything(kind: str, tmp_path: Path,
                                                 nothing_expensive: None,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep")
    out = {"empty": "", "file": str(afile), "under a file": str(afile / "run")}[kind]
    err = _refused(["--out", out], capsys)
    assert ("--out" in err) if kind == "empty" else (str(afile) in err)
    assert afile.read_text() == "keep" and sorted(os.listdir(tmp_path)) == ["afile"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_refused(tmp_path: Path, nothing_expensive: None,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        err = _refused(["--out", str(locked / "run")], capsys)
    finally:
        locked.chmod(0o755)
    assert str(locked) in err and "not writable" in err


def test_resume_without_checkpoint_is_refused_before_anything(
        tiny_data: Path, tmp_path: Path, nothing_expensive: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(["--data", str(tiny_data), "--batch", "2", "--resume", "--out",
                    str(tmp_path / "run")], capsys)
    assert str(tmp_path / "run" / "checkpoint" / "state.pt") in err
