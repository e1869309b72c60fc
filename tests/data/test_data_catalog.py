"""The clip catalog against what the generator drew, the files on disk, and hand-built cases."""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_data_scene import EGO, _corners, _overlap

from dojo.cli.main import main
from dojo.data.catalog import index_set, read_tables, read_version, write_version
from dojo.data.clipstats import occlusion
from dojo.data.geometry import make_rig
from dojo.data.query import connect, run_sql
from dojo.data.scenario import SCENARIOS, make_clip_scene
from dojo.data.scene import CLASS_NAMES, boxes_world, ego_pose, to_ego
from dojo.data.synth import SynthConfig, clip_scene, synthesize
from dojo.errors import DojoError


def _rows(catalog: Path, table: str) -> list[dict]:
    return read_tables(str(catalog), (table,))[table].to_pylist()


def test_clip_rows_are_what_the_generator_drew(tiny_set: Path, tiny_cfg: SynthConfig) -> None:
    clips = {r["name"]: r for r in _rows(tiny_set / "catalog", "clips")}
    con = connect(str(tiny_set / "catalog"))
    for i in range(tiny_cfg.clips):
        scene = clip_scene(tiny_cfg, i)
        row = clips[f"clip_{i:04d}"]
        assert {k: row[k] for k in ("scenario", "weather", "time_of_day")} == dict(scene.tags)
        # objects that come inside the grid, by class, counted from the scene itself
        seen = np.zeros(len(scene.actors), bool)
        for k in range(tiny_cfg.frames):
            ego = to_ego(boxes_world(scene, k), ego_pose(scene, k))
            seen |= (np.abs(ego[:, 0]) < tiny_cfg.range_m) & (np.abs(ego[:, 1]) < tiny_cfg.range_m)
        want = {c: sum(1 for a, s in zip(scene.actors, seen) if s and CLASS_NAMES[a.kind] == c)
                for c in CLASS_NAMES}
        _, got = run_sql(con, "SELECT cars, trucks, pedestrians, cones, ego_speed_mps, frames "
                         f"FROM clips WHERE name = 'clip_{i:04d}'")
        cars, trucks, walkers, cones, speed, frames = got[0]
        assert (cars, trucks, walkers, cones) == (want["car"], want["truck"],
                                                   want["pedestrian"], want["cone"])
        assert speed == pytest.approx(scene.ego_speed, rel=1e-3)
        assert frames == tiny_cfg.frames


def test_camera_rows_match_the_files(tiny_set: Path, tiny_cfg: SynthConfig) -> None:
    rows = _rows(tiny_set / "catalog", "cameras")
    assert len(rows) == tiny_cfg.clips * tiny_cfg.cameras
    for r in rows:
        path = Path(r["path"])
        assert r["bytes"] == path.stat().st_size
        assert (r["codec"], r["pix_fmt"], r["width"], r["height"]) == ("h264", "yuv420p", 64, 48)
        assert r["frames"] == tiny_cfg.frames
        assert r["keyframes"] == math.ceil(tiny_cfg.frames / tiny_cfg.gop)
        # packets are the file less its container: the bitrate's bytes fit inside the file
        payload = r["bitrate_bps"] * tiny_cfg.frames / tiny_cfg.fps / 8
        assert 0.3 * r["bytes"] < payload < r["bytes"]


def test_clip_hash_is_the_sha256_of_its_files(tiny_set: Path) -> None:
    clips = {r["name"]: r["clip_hash"] for r in _rows(tiny_set / "catalog", "clips")}
    digest = hashlib.sha256()
    folder = tiny_set / "clip_0002"
    for cam in [c.name for c in make_rig(6, 64, 48)]:
        data = (folder / f"{cam}.mp4").read_bytes()
        digest.update(cam.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    data = (folder / "labels.npz").read_bytes()
    digest.update(b"labels\0" + len(data).to_bytes(8, "little") + data)
    assert clips["clip_0002"] == digest.hexdigest()


def test_night_pictures_are_darker_than_day(tmp_path: Path) -> None:
    luma = {}
    for time in ("day", "night"):
        cfg = SynthConfig(clips=1, cameras=2, frames=2, width=32, height=32, grid=8,
                          time_of_day=time, weather="clear", seed=5)
        synthesize(tmp_path / time, cfg)
        luma[time] = np.mean([r["mean_luma"] for r in _rows(tmp_path / time / "catalog",
                                                             "cameras")])
    assert luma["night"] < 0.35 * luma["day"]


def test_occlusion_by_hand() -> None:
    K = np.array([[[50.0, 0, 49.5], [0, 50.0, 31.5], [0, 0, 1]]])  # (1, 3, 3)
    E = np.eye(4)[None].copy()  # camera at the origin looking along +z of the ego... (1, 4, 4)
    E[0, :3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]  # OpenCV camera: x right, y down, z fwd
    E[0, 2, 3] = 1.0
    near = [5.0, 0.0, 1.0, 1.0, 4.0, 4.0, 0.0]  # a wall 4 m wide and tall, 5 m ahead
    far = [12.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # a 1 m box right behind it
    aside = [12.0, 9.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # seen past the wall
    got = occlusion(np.array([near, far, aside]), K, E, 100, 64)
    np.testing.assert_allclose(got, [0.0, 1.0, 0.0])


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_scenario_keeps_actors_apart(scenario: str) -> None:
    for seed in range(2):
        scene = make_clip_scene(np.random.default_rng(seed), 30, 10.0, {"scenario": scenario})
        assert dict(scene.tags)["scenario"] == scenario
        for k in range(0, 30, 3):
            corners = [_corners(b) for b in to_ego(boxes_world(scene, k), ego_pose(scene, k))]
            assert not any(_overlap(_corners(EGO), c) for c in corners), f"{k}: hits ego"
            for i in range(len(corners)):
                for j in range(i):
                    assert not _overlap(corners[i], corners[j]), f"{k}: actors {i}, {j}"


def test_mix_has_every_scenario_and_the_rare_ones_are_rare() -> None:
    drawn = [dict(make_clip_scene(np.random.default_rng([0, i]), 2, 10.0).tags)
             for i in range(400)]
    counts = {s: sum(d["scenario"] == s for d in drawn) for s in SCENARIOS}
    assert all(counts.values())
    # binomial: 400 draws at p = 0.09 give 36 +- 6; at 0.34, 136 +- 9.5
    assert 15 < counts["cut_in"] < 60 and 95 < counts["urban"] < 180


def test_bad_clips_are_skipped_one_line_each(tiny_set: Path, tmp_path: Path) -> None:
    root = tmp_path / "set"
    shutil.copytree(tiny_set, root, ignore=shutil.ignore_patterns("catalog"))
    (root / "clip_0000" / "front.mp4").write_bytes(b"not a video")
    labels = dict(np.load(root / "clip_0001" / "labels.npz"))
    labels["occupancy"][3] = 1 - labels["occupancy"][3]  # grid no longer matches the boxes
    np.savez(root / "clip_0001" / "labels.npz", **labels)
    (root / "clip_0002" / "labels.npz").unlink()
    result = index_set(str(root), str(tmp_path / "cat"))
    reasons = {s.clip: s.reason for s in result.skipped}
    assert set(reasons) == {"clip_0000", "clip_0001", "clip_0002"}
    assert "corrupt video" in reasons["clip_0000"]
    assert "mislabelled" in reasons["clip_0001"] and "frame 3" in reasons["clip_0001"]
    assert "does not exist" in reasons["clip_0002"]
    assert _rows(tmp_path / "cat", "clips") == []


def test_reindex_replaces_and_versions_are_immutable(tiny_set: Path, tmp_path: Path) -> None:
    cat = str(tmp_path / "cat")
    first = index_set(str(tiny_set), cat, "train")
    index_set(str(tiny_set), cat, "train")
    assert len(_rows(tmp_path / "cat", "clips")) == len(first.clips)
    v = write_version(cat, list(reversed(first.clips)), note="all")
    assert write_version(cat, first.clips).id == v.id
    assert read_version(cat, v.id).clips == tuple(sorted(first.clips))
    path = tmp_path / "cat" / "versions" / f"{v.id}.json"
    path.write_text(path.read_text().replace(first.clips[0], "0" * 64))
    with pytest.raises(DojoError, match="altered"):
        read_version(cat, v.id)


def test_catalog_and_clips_through_fsspec_memory(tiny_set: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    for path in tiny_set.rglob("*"):
        if path.is_file() and "catalog" not in path.parts:
            fs.pipe(f"/mem-set/{path.relative_to(tiny_set)}", path.read_bytes())
    result = index_set("memory://mem-set", "memory://mem-cat", "val")
    assert len(result.clips) == 3 and not result.skipped
    _, rows = run_sql(connect("memory://mem-cat"), "SELECT count(*), min(split) FROM clips")
    assert rows == [(3, "val")]


def test_query_cli_and_its_errors(tiny_set: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    cat = str(tiny_set / "catalog")
    assert main(["data", "query", "SELECT count(*) AS n FROM clips", "--catalog", cat,
                 "--format", "csv"]) == 0
    assert capsys.readouterr().out == "n\n3\n"
    slices = tmp_path / "s.toml"
    slices.write_text('[slices.busy]\nwhere = "objects >= 0"\nweight = 2\n'
                      '[slices.bad]\nwhere = "no_such_column = 1"\n')
    cases = [(["SELEC 1"], "bad SQL"), (["DELETE FROM clips"], "only SELECT"),
             (["SELECT 1", "--catalog", str(tmp_path / "none")], "no catalog"),
             (["--slice", "busy", "--slices", str(slices)], "slices.bad.where"),
             (["SELECT 1", "--format", "xml"], "--format")]
    for argv, words in cases:
        assert main(["data", "query", *argv, *(["--catalog", cat] if "--catalog" not in argv
                                                else [])]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
