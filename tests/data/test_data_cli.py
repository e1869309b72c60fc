"""`dojo data`: exits 0 with JSON on success, 2 with one line on stderr for bad arguments."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dojo.cli.main import main


@pytest.mark.parametrize(
    "args, words",
    [
        (["--size", "95x64"], "'width' = 95"),
        (["--size", "96x63"], "'height' = 63"),
        (["--size", "96"], "WxH"),
        (["--clips", "0"], "'clips' = 0"),
        (["--clips", "two"], "'clips' = 'two'"),
        (["--cameras", "7"], "'cameras' = 7"),
        (["--range", "-1"], "'range_m' = -1"),
        # issue 14 item 6: unbounded work is refused, not started
        (["--clips", "10000000000000"], "'clips' = 10000000000000"),
        (["--frames", "10000000000000000"], "'frames' = 10000000000000000"),
        # 6 cameras x 96 x 64 x 3 B of pixels and a 32 x 32 B occupancy grid per frame: 4 GiB
        # holds 2**32 // 111,616 = 38,480 frames
        (["--frames", "40000"], f"at most {2**32 // (6 * 96 * 64 * 3 + 32 * 32)}"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            args: list[str], words: str) -> None:
    base = {"--out": str(tmp_path / "set"), "--clips": "1"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = ["data", "synth", *[x for kv in base.items() for x in kv]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dojo: error:") and words in err
    assert not (tmp_path / "set").exists()


def test_synth_then_check_then_fps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "set"
    argv = ["data", "synth", "--out", str(out), "--clips", "2", "--cameras", "2", "--frames", "3",
            "--size", "32x32", "--grid", "8", "--range", "8", "--seed", "1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["clips"] == 2 and report["size"] == [32, 32]
    assert "2/2 clips" in captured.err  # progress goes to stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cameras"] == ["front", "front_left"] and len(manifest["clips"]) == 2
    assert manifest["grid"] == {"size": 8, "range_m": 8.0} and manifest["gop"] == 8

    assert main(["data", "synth", "--out", str(out), "--clips", "1"]) == 2  # no overwrite
    assert "--force" in capsys.readouterr().err

    assert main(["data", "check", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["usable"] == 2
    (out / "clip_0001" / "front.mp4").write_bytes(b"junk")
    assert main(["data", "check", str(out)]) == 1
    skipped = json.loads(capsys.readouterr().out)["skipped"]
    assert skipped[0]["file"] == str(out / "clip_0001" / "front.mp4")
    assert main(["data", "check", str(out), "--policy", "error"]) == 2
    assert "front.mp4" in capsys.readouterr().err

    shutil.rmtree(out / "clip_0001")
    assert main(["data", "fps", str(out / "clip_0000"), "--seconds", "0.05"]) == 0
    assert json.loads(capsys.readouterr().out)["decode_fps_per_core"] > 0


@pytest.mark.parametrize("argv, words", [
    (["data", "check", "{tmp}", "--policy", "bogus"], "one of error, skip"),
    (["data", "check", "{tmp}/none"], "no manifest"),
    (["data", "fps", "{tmp}/none"], "no .mp4 files"),
    (["data", "fps", "{tmp}", "--seconds", "0"], "'seconds' = 0"),
])
def test_bad_check_and_fps_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     argv: list[str], words: str) -> None:
    (tmp_path / "manifest.json").write_text("{}")
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err


def test_synth_reports_each_view_of_a_large_clip(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A clip whose frames are large reports each camera's view as it is rendered (a 4096 x
    4096 clip of 6 cameras x 8 frames renders for many minutes before its "1/1 clips" line);
    here the threshold is lowered so that a small clip counts as large."""
    from dojo.data import synth

    monkeypatch.setattr(synth, "VIEW_PROGRESS_UNITS", 0)
    argv = ["data", "synth", "--out", str(tmp_path / "set"), "--clips", "2", "--cameras", "2",
            "--frames", "2", "--size", "32x32", "--grid", "8"]
    assert main(argv) == 0
    lines = capsys.readouterr().err.splitlines()
    views = [f"dojo data synth: clip {c}/2: frame {f}/2, camera {k}/2"
             for c in (1, 2) for f in (1, 2) for k in (1, 2)]
    assert lines == views[:4] + ["dojo data synth: 1/2 clips"] + views[4:] + [
        "dojo data synth: 2/2 clips"]
