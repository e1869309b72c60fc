"""Evaluation by slice: bootstrap intervals in closed form, slices against the catalog, and
`dojo eval` on a finished run against the metrics.json the run wrote."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from dojo.cli.main import main
from dojo.data.catalog import read_tables, read_version
from dojo.train import TrainResult
from dojo.train.slices import bootstrap_ci, pooled_iou


def test_bootstrap_of_identical_clips_is_a_point() -> None:
    counts = np.array([[3, 6]] * 5)
    assert bootstrap_ci(counts, seed=0) == (0.5, 0.5)


def test_bootstrap_of_two_clips_spans_their_ious() -> None:
    # resamples of {1/2, 3/4} pool to 1/2 (p 1/4), 4/6 (p 1/2) or 3/4 (p 1/4):
    # the 2.5th and 97.5th percentiles are the two ends
    counts = np.array([[1, 2], [3, 4]])
    assert pooled_iou(counts) == pytest.approx(4 / 6)
    assert bootstrap_ci(counts, seed=1) == (pytest.approx(0.5), pytest.approx(0.75))
    assert bootstrap_ci(counts, seed=1) == bootstrap_ci(counts, seed=1)


def test_run_records_versions_and_slices_of_its_held_out_clips(tiny_run: TrainResult) -> None:
    m = json.loads(tiny_run.files["metrics"].read_text())
    catalog = str(tiny_run.files["metrics"].parent / "catalog")
    clips = read_tables(catalog, ("clips", "splits"))
    by_split: dict[str, list[str]] = {}
    for row in clips["splits"].to_pylist():
        by_split.setdefault(row["split"], []).append(row["clip_hash"])
    for name in ("train", "val"):
        hashes = sorted(by_split[name])
        assert m["dataset"][name] == hashlib.sha256("\n".join(hashes).encode()).hexdigest()[:16]
        assert read_version(catalog, m["dataset"][name]).clips == tuple(hashes)
    # default slices: one per tag value of the held-out clips; counts add up per tag
    val = {r["clip_hash"] for r in clips["splits"].to_pylist() if r["split"] == "val"}
    tags = [r for r in clips["clips"].to_pylist() if r["clip_hash"] in val]
    for key in ("scenario", "weather", "time_of_day"):
        want = {f"{key}_{t[key]}" for t in tags}
        got = {k: v for k, v in m["slices"].items() if k.startswith(key)}
        assert set(got) == want
        assert sum(v["clips"] for v in got.values()) == len(tags)
        for v in got.values():
            assert v["ci95"][0] <= v["iou"] <= v["ci95"][1]


def test_eval_of_the_run_gives_its_metrics(tiny_run: TrainResult, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    run = tiny_run.files["metrics"].parent
    m = json.loads(tiny_run.files["metrics"].read_text())
    assert main(["eval", str(run), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["slices"] == m["slices"]
    assert got["val_iou"] == pytest.approx(m["val_iou"])
    bad = tmp_path / "s.toml"
    bad.write_text('[slices.x]\nwhere = "nonsense ="\n')
    for argv, words in ((["eval", str(tmp_path / "none")], "no such run"),
                        (["eval", str(run), "--slices", str(bad)], "slices.x.where"),
                        (["eval", str(run), "--slices", str(tmp_path / "no.toml")], "no slices")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1
