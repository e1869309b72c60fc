"""Bad clip sets: each problem is a DojoError naming the file, or (policy "skip") a warned,
recorded skip; never a silently wrong sample."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest

from dojo.data.layout import SkippedClipWarning, open_clips
from dojo.data.loader import ClipLoader, LoaderConfig
from dojo.errors import DojoError


@pytest.fixture
def copy_set(tiny_set: Path, tmp_path: Path) -> Path:
    root = tmp_path / "set"
    shutil.copytree(tiny_set, root)
    return root


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00\x01not an mp4 at all" * 50)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _delete(path: Path) -> None:
    path.unlink()


DAMAGE: dict[str, Callable[[Path], None]] = {"corrupt": _garbage, "truncated": _truncate,
                                             "missing": _delete}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_policy_error_names_the_file(copy_set: Path, kind: str) -> None:
    bad = copy_set / "clip_0001" / "back.mp4"
    DAMAGE[kind](bad)
    with pytest.raises(DojoError) as err:
        open_clips(copy_set, "error")
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_policy_skip_warns_and_records(copy_set: Path, kind: str) -> None:
    bad = copy_set / "clip_0001" / "back.mp4"
    DAMAGE[kind](bad)
    with pytest.warns(SkippedClipWarning, match="clip_0001"):
        loader = ClipLoader(copy_set, LoaderConfig(window=8, batch_size=1, policy="skip"))
    assert [(s.clip, s.file) for s in loader.skipped] == [("clip_0001", str(bad))]
    assert loader.skipped[0].reason
    clips = sorted(b["clip"].item() for b in loader)
    assert clips == [0, 1]  # indices into the usable clips: clip_0000 and clip_0002
    assert [c.name for c in loader.dataset.clipset.clips] == ["clip_0000", "clip_0002"]


def _edit_manifest(root: Path, edit: Callable[[dict], None]) -> None:
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_clip_with_fewer_cameras_than_the_manifest(copy_set: Path) -> None:
    _edit_manifest(copy_set, lambda m: m["clips"][2]["videos"].pop("back_right"))
    with pytest.raises(DojoError, match=r"clip_0002 lists 5 videos for 6 cameras"):
        open_clips(copy_set, "error")
    with pytest.warns(SkippedClipWarning):
        clipset = open_clips(copy_set, "skip")
    assert [c.name for c in clipset.clips] == ["clip_0000", "clip_0001"]
    assert clipset.skipped[0].file.endswith("manifest.json")


def test_labels_with_the_wrong_camera_count(copy_set: Path) -> None:
    path = copy_set / "clip_0000" / "labels.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["extrinsics"] = arrays["extrinsics"][:5]
    np.savez(path, **arrays)
    with pytest.raises(DojoError, match=r"labels.npz: labels 'extrinsics' have shape \(5, 4, 4\)"):
        open_clips(copy_set, "error")


def test_video_of_the_wrong_size(copy_set: Path, tmp_path: Path) -> None:
    from dojo.data.video import encode_mp4

    encode_mp4(copy_set / "clip_0000" / "front.mp4", np.zeros((8, 32, 32, 3), np.uint8), 10)
    with pytest.raises(DojoError, match=r"front\.mp4: video is 32x32, manifest says 64x48"):
        open_clips(copy_set, "error")


def test_video_at_another_frame_rate(copy_set: Path) -> None:
    from dojo.data.video import encode_mp4

    encode_mp4(copy_set / "clip_0001" / "back.mp4", np.zeros((8, 48, 64, 3), np.uint8), 25)
    with pytest.raises(DojoError, match=r"back\.mp4: video runs at 25 frames/s, manifest says 10"):
        open_clips(copy_set, "error")


def test_no_or_broken_manifest(tmp_path: Path, copy_set: Path) -> None:
    with pytest.raises(DojoError, match="no manifest"):
        open_clips(tmp_path / "nothing-here")
    (copy_set / "manifest.json").write_text("{ not json")
    with pytest.raises(DojoError, match=r"manifest\.json: not valid JSON"):
        open_clips(copy_set)
    (copy_set / "manifest.json").write_text(json.dumps({"format": "dojo-clips"}))
    with pytest.raises(DojoError, match=r"manifest\.json: field 'version'"):
        open_clips(copy_set)


def _faststart_truncated(path: Path) -> None:
    """Remux with the index first (header stays whole), then cut the frame data short."""
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(path)) as src, av.open(str(tmp), "w", format="mp4",
                                             options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    data = tmp.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    tmp.unlink()


def test_truncation_found_only_while_decoding(copy_set: Path) -> None:
    bad = copy_set / "clip_0002" / "front.mp4"
    _faststart_truncated(bad)
    assert open_clips(copy_set, "error").skipped == ()  # the header still looks whole
    with pytest.raises(DojoError, match=r"front\.mp4"):
        open_clips(copy_set, "error", verify=True)
    strict = ClipLoader(copy_set, LoaderConfig(window=8, batch_size=3, shuffle=False))
    # match=, not `as err`: a local ExceptionInfo would keep this frame (and the worker loader
    # below) in a reference cycle, whose collection waits 5 s per persistent worker
    with pytest.raises(DojoError, match=re.escape(str(bad))):
        list(strict)
    lenient = ClipLoader(copy_set, LoaderConfig(window=8, batch_size=3, shuffle=False,
                                                policy="skip", num_workers=1))
    with pytest.warns(SkippedClipWarning, match="clip_0002"):
        batches = list(lenient)
    assert [b["clip"].tolist() for b in batches] == [[0, 1]]  # clip 2 left out of the batch
    assert [s.file for s in lenient.skipped] == [str(bad)]
