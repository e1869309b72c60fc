"""Mining: the scores against an independent forward pass and the generator's tags, the new
version's lineage, the set written for it, and the rounds loop on a tiny set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dojo.cli.main import main
from dojo.data import ClipLoader, LoaderConfig, open_clips
from dojo.data.catalog import index_set, read_version, write_version
from dojo.data.query import Slice
from dojo.data.synth import SynthConfig, synthesize
from dojo.train import TrainOptions, train_occupancy
from dojo.train.loop import make_model, model_overrides
from dojo.train.mine import mine
from dojo.train.rounds import weakest_slice

from .conftest import TINY, tiny_options


@pytest.fixture(scope="module")
def mining_setup(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> tuple[str, Path, torch.nn.Module, TrainOptions]:
    root = tmp_path_factory.mktemp("mine")
    cat = str(root / "cat")
    for scenario in ("parking", "highway"):
        synthesize(root / f"pool_{scenario}", SynthConfig(seed=9, scenario=scenario,
                                                          **TINY), catalog="")  # type: ignore[arg-type]
        index_set(str(root / f"pool_{scenario}"), cat, "pool")
    index_set(str(tiny_data / "train"), cat, "train")
    opts = tiny_options(root / "run", tiny_data)
    manifest = open_clips(tiny_data / "train").manifest
    model, _, _ = make_model(model_overrides(manifest, opts.window, opts.channels, opts.lr),
                             opts.precision, opts.seed)
    return cat, root, model, opts


def test_mined_clips_are_the_best_scored_and_join_the_version(
        mining_setup: tuple[str, Path, torch.nn.Module, TrainOptions], tiny_data: Path) -> None:
    cat, _, model, opts = mining_setup
    train_hashes = index_set(str(tiny_data / "train"), cat, "train").clips
    train = write_version(cat, train_hashes)
    slices = {"parking": Slice(where="scenario = 'parking'")}
    got = mine(model, cat, train, "parking", slices, 2, "pool", opts)
    assert got.version.parent == train.id
    assert set(got.version.clips) == {*train_hashes, *(c["clip_hash"] for c in got.chosen)}
    assert read_version(cat, got.version.id).clips == got.version.clips
    for c in got.chosen:
        assert c["score"] == pytest.approx(c["in_slice"] + c["similarity"] + c["error"]
                                           + c["uncertainty"])
        assert c["in_slice"] == ("pool_parking/" in c["clip"])  # the generator's scenario
    # error of one chosen clip from an independent pass over its windows
    c = got.chosen[0]
    folder, name = c["clip"].rsplit("/", 1)
    loader = ClipLoader(folder, LoaderConfig(batch_size=8, window=opts.window,
                                             stride=opts.window, shuffle=False))
    names = [x.name for x in loader.dataset.clipset.clips]
    inter = union = 0
    ent: list[float] = []
    with torch.no_grad():
        for batch in loader:
            logits = model.eval()(batch["frames"], batch["intrinsics"], batch["extrinsics"])
            for k in range(len(logits)):
                if names[int(batch["clip"][k])] != name:
                    continue
                p = torch.sigmoid(logits[k]).double().numpy()
                truth = batch["occupancy"][k].numpy() > 0.5
                inter += int(((p > 0.5) & truth).sum())
                union += int(((p > 0.5) | truth).sum())
                q = np.clip(p, 1e-7, 1 - 1e-7)
                ent.append(float(np.mean(-(q * np.log(q) + (1 - q) * np.log(1 - q))) / math.log(2)))
    assert c["error"] == pytest.approx(1 - inter / union)
    assert c["uncertainty"] == pytest.approx(np.mean(ent), rel=1e-4)


def test_unknown_slice_and_empty_pool_are_one_line(
        mining_setup: tuple[str, Path, torch.nn.Module, TrainOptions]) -> None:
    from dojo.errors import DojoError

    cat, _, model, opts = mining_setup
    train = write_version(cat, ["0" * 64])
    with pytest.raises(DojoError, match="--slice"):
        mine(model, cat, train, "nope", {"x": Slice(where="true")}, 1, "pool", opts)
    with pytest.raises(DojoError, match="no unused clips of split 'elsewhere'"):
        mine(model, cat, train, "x", {"x": Slice(where="true")}, 1, "elsewhere", opts)


def test_weakest_slice_needs_two_clips() -> None:
    s = {"a": {"iou": 0.1, "clips": 1}, "b": {"iou": 0.3, "clips": 2},
         "c": {"iou": 0.2, "clips": 5}}
    assert weakest_slice(s) == "c"
    assert weakest_slice({"a": {"iou": 0.1, "clips": 1}}) == "a"


def test_mine_cli_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, words in ((["--budget", "0"], "--budget"), (["--budget", "x"], "--budget"),
                        (["--budget", "2"], "no such run")):
        assert main(["data", "mine", str(tmp_path / "none"), "--slice", "s", *argv]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1


@pytest.mark.slow
def test_rounds_mine_for_the_weakest_slice_and_retrain(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train_occupancy(tiny_options(out, tiny_data, rounds=2, budget=1, pool_clips=2))
    m = json.loads((out / "metrics.json").read_text())
    first, second = m["rounds"]
    assert second["mined_for"] == weakest_slice(first["slices"])
    assert second["train_clips"] == first["train_clips"] + 1
    assert read_version(str(out / "catalog"), second["train_version"]).parent == \
        first["train_version"]
    assert len(open_clips(out / "round-1" / "train").clips) == 3
    assert result.rounds[1]["val_iou"] == second["val_iou"]
    # against the previous round: the pooled IoUs' difference on the same held-out clips
    assert first["vs_previous"] == {} and set(second["vs_previous"]) == set(second["slices"])
    for name, change in second["vs_previous"].items():
        assert change["delta"] == pytest.approx(second["slices"][name]["iou"]
                                                - first["slices"][name]["iou"])
        assert change["ci95"][0] <= change["ci95"][1] and 0.0 <= change["p"] <= 1.0
    assert "change [95 %]" in (out / "report.html").read_text()


def test_mine_cli_by_and_seed_refusals(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, words in ((["--by", "loss"], "--by"), (["--seed", "x", "--by", "random"], "--seed"),
                        (["--seed", "-1", "--by", "random"], "--seed"),
                        (["--seed", "3"], "only with --by random")):
        assert main(["data", "mine", "norun", "--slice", "s", "--budget", "2", *argv]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1


def test_slice_weights_repeat_clips_in_the_training_set(
        mining_setup: tuple[str, Path, torch.nn.Module, TrainOptions], tmp_path: Path) -> None:
    from dojo.data.catalog import read_tables
    from dojo.train.rounds import weighted_set

    cat, _, _, opts = mining_setup
    pool = [r["clip_hash"] for r in read_tables(cat, ("splits",))["splits"].to_pylist()
            if r["split"] == "pool"]
    version = write_version(cat, pool)
    slices = {"p": Slice(where="scenario = 'parking'", weight=3.0)}
    folder = weighted_set(cat, version.id, slices, tmp_path / "w")
    clips = open_clips(folder).clips
    assert len(clips) == 2 * 3 + 2  # two parking clips three times, two highway clips once
    loader = ClipLoader(folder, LoaderConfig(window=opts.window, stride=opts.window))
    assert len(loader.dataset) == 8 * (TINY["frames"] // opts.window)
