"""`--train-set` (a dataset version or a set folder trains directly) and `--mine-by random`
(the control of the mining loop)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dojo.cli.main import main
from dojo.data import open_clips
from dojo.data.catalog import index_set, read_version, write_version
from dojo.data.synth import SynthConfig, synthesize
from dojo.train import TrainResult, train_occupancy
from dojo.train.rounds import pick_random

from .conftest import TINY, tiny_options


@pytest.fixture(scope="module")
def mined(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """A catalog with the tiny training set and a 4-clip pool; a version of the training
    clips plus the first pool clip (what `dojo data mine` records): (catalog, version, root)."""
    root = tmp_path_factory.mktemp("trainset")
    cat = str(root / "cat")
    synthesize(root / "pool", SynthConfig(seed=7, **{**TINY, "clips": 4}),  # type: ignore[arg-type]
               catalog="")
    pool = index_set(str(root / "pool"), cat, "pool").clips
    train = index_set(str(tiny_data / "train"), cat, "train").clips
    parent = write_version(cat, train)
    version = write_version(cat, [*train, pool[0]], parent=parent.id, note="mined 1")
    return cat, version.id, root


def test_a_version_id_trains_directly_and_is_recorded(
        mined: tuple[str, str, Path], tiny_data: Path, tmp_path: Path) -> None:
    cat, vid, _ = mined
    out = tmp_path / "run"
    result = train_occupancy(tiny_options(out, tiny_data, train_set=vid, catalog=cat))
    m = json.loads((out / "metrics.json").read_text())
    assert m["dataset"]["train"] == vid  # the same clips hash to the same version ID
    names = {c.name for c in open_clips(out / "train-set").clips}
    assert names == {"train-clip_0000", "train-clip_0001", "pool-clip_0000"}
    assert result.train_samples == 3 * (TINY["frames"] - 4 + 1)  # windows of 4, stride 1


def test_a_set_folder_trains_directly(mined: tuple[str, str, Path], tiny_data: Path,
                                      tmp_path: Path) -> None:
    _, _, root = mined
    out = tmp_path / "run"
    train_occupancy(tiny_options(out, tiny_data, train_set=str(root / "pool")))
    m = json.loads((out / "metrics.json").read_text())
    pool_version = write_version(str(tmp_path / "c"), index_set(str(root / "pool"),
                                                                 str(tmp_path / "c")).clips)
    assert m["dataset"]["train"] == pool_version.id


@pytest.mark.parametrize("value, words", [
    ("nope", "--train-set"), ("0123456789abcdef", "versions (give --catalog")])
def test_bad_train_set_is_one_line_and_writes_nothing(
        value: str, words: str, tiny_data: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(["train", "occupancy", "--out", str(out), "--data", str(tiny_data),
                 "--train-set", value, "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 2 and words in err and err.count("\n") == 1
    assert not out.exists()


def test_mine_by_random_draws_seeded_unused_pool_clips(mined: tuple[str, str, Path]) -> None:
    cat, vid, _ = mined
    base = read_version(cat, vid)  # holds pool clip 0 already
    got = pick_random(cat, base, "night", 2, "pool", seed=5)
    import pyarrow.parquet as pq

    splits = pq.read_table(Path(cat) / "splits.parquet").to_pylist()
    unused = sorted(r["clip_hash"] for r in splits if r["split"] == "pool"
                    and r["clip_hash"] not in base.clips)
    want = sorted(unused[i] for i in np.random.default_rng(5).choice(len(unused), 2,
                                                                       replace=False))
    assert [c["clip_hash"] for c in got.chosen] == want
    assert got.version.parent == vid
    assert set(got.version.clips) == {*base.clips, *want}
    every = pick_random(cat, base, "night", 9, "pool", seed=5)
    assert set(every.version.clips) == {*base.clips, *unused}  # a budget past the unused clips
    assert len(unused) == 3


def test_training_reads_data_through_a_url_like_the_local_folder(
        tiny_data: Path, tiny_run: TrainResult, tmp_path: Path) -> None:
    """--data memory://... trains on the same bytes as the local folder: metrics.json is the
    same file (dataset versions are content hashes; no path is in it)."""
    url = _to_memory(tiny_data)
    out = tmp_path / "run"
    train_occupancy(tiny_options(out, url))
    assert (out / "metrics.json").read_bytes() == tiny_run.files["metrics"].read_bytes()


@pytest.mark.parametrize("extra, words", [
    ([], "memory://nothing-here/train: no clip set there"),
    (["--synth"], "--synth"), (["--measure-decode"], "--measure-decode")])
def test_url_data_refusals_are_one_line(extra: list[str], words: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(["train", "occupancy", "--out", str(out), "--data", "memory://nothing-here",
                 "--steps", "2", *extra])
    err = capsys.readouterr().err
    assert code == 2 and words in err and err.count("\n") == 1, err
    assert not out.exists()


def test_out_as_a_url_is_refused_in_one_line(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "occupancy", "--out", "memory://runs/x", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "a local folder" in err and err.count("\n") == 1


@pytest.mark.slow
def test_rounds_with_mine_by_random_add_seeded_pool_clips(
        tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    train_occupancy(tiny_options(out, tiny_data, rounds=2, budget=1, pool_clips=3,
                                 mine_by="random"))
    m = json.loads((out / "metrics.json").read_text())
    first, second = m["rounds"]
    cat = str(out / "catalog")
    added = set(read_version(cat, second["train_version"]).clips) - \
        set(read_version(cat, first["train_version"]).clips)
    base = read_version(cat, first["train_version"])
    assert [c["clip_hash"] for c in pick_random(cat, base, "x", 1, "pool", 1).chosen] == \
        sorted(added)  # round 1 drew with seed + 1
    assert "the control (--mine-by random)" in (out / "report.html").read_text()
    # `dojo data mine RUN --by random` on round 0 draws what round 1 drew (seed + 1 by default)
    assert main(["data", "mine", str(out), "--slice", second["mined_for"], "--budget", "1",
                 "--by", "random"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["version"] == second["train_version"] and got["by"] == "random"
    assert main(["data", "mine", str(out), "--slice", second["mined_for"], "--budget", "1",
                 "--by", "random", "--seed", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == second["train_version"]


def _to_memory(local: Path) -> str:
    """A copy of the set in fsspec's in-memory file system; its URL (as the data tests make it:
    tests/data is not a package, so its helper cannot be imported from here)."""
    import uuid

    import fsspec

    fs = fsspec.filesystem("memory")
    base = f"/sets-{uuid.uuid4().hex}"
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.pipe_file(f"{base}/{path.relative_to(local).as_posix()}", path.read_bytes())
    return f"memory://{base}"
