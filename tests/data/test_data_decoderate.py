"""The decode-rate probe: a cached synthetic clip at the wanted size, decoded on one core."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from av.video.frame import PictureType

import dojo.data.decoderate as decoderate
from dojo.data.decoderate import (
    PAN_PER_FRAME,
    PROBE_FRAMES,
    measure_decode_fps_at,
    pattern_frames,
    probe_clip,
)
from dojo.data.video import GOP
from dojo.errors import ConfigError


def test_pattern_pans_by_the_stated_fraction_of_the_frame() -> None:
    frames = pattern_frames(640, 480, frames=3)
    assert frames.shape == (3, 480, 640, 3) and frames.dtype == np.uint8
    assert PAN_PER_FRAME == (1 / 320, 1 / 960)
    dx, dy = 2, 1  # 640 / 320 pixels; 480 / 960 = 0.5 rounds to 0, and the pan is at least 1
    # frame k+1 is frame k moved by (dx, dy): what was at (y+dy, x+dx) is now at (y, x)
    assert np.array_equal(frames[1][:-dy, :-dx], frames[0][dy:, dx:])
    assert frames.std() > 20  # a textured image, not a flat field


def test_probe_clip_has_the_data_set_settings(tmp_path: Path) -> None:
    path = probe_clip(64, 48, tmp_path)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = list(container.decode(stream))
    assert [f.key_frame for f in frames] == [k % GOP == 0 for k in range(PROBE_FRAMES)]
    assert {(f.width, f.height, f.format.name) for f in frames} == {(64, 48, "yuv420p")}
    kinds = [PictureType.I if k % GOP == 0 else PictureType.P for k in range(PROBE_FRAMES)]
    assert [f.pict_type for f in frames] == kinds  # no B-frames


def test_probe_clip_is_encoded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = probe_clip(64, 48, tmp_path)
    stamp = first.stat().st_mtime_ns

    def no_encode(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached clip was encoded again")

    monkeypatch.setattr(decoderate, "encode_mp4", no_encode)
    assert measure_decode_fps_at(64, 48, seconds=0.02, cache_dir=tmp_path) > 0
    assert probe_clip(64, 48, tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left behind


def test_damaged_cached_clip_is_encoded_again(tmp_path: Path) -> None:
    path = probe_clip(64, 48, tmp_path)
    good = path.read_bytes()
    path.write_bytes(good[:200])
    assert probe_clip(64, 48, tmp_path).read_bytes() == good  # libx264 threads=1: same bytes


def test_rate_falls_with_resolution(tmp_path: Path) -> None:
    small = measure_decode_fps_at(64, 48, seconds=0.1, cache_dir=tmp_path)
    large = measure_decode_fps_at(320, 240, seconds=0.1, cache_dir=tmp_path)
    assert small > large > 0  # 25x the pixels per frame


@pytest.mark.parametrize(("width", "height"), [(63, 48), (64, 8), (0, 48)])
def test_bad_size_is_a_config_error(tmp_path: Path, width: int, height: int) -> None:
    with pytest.raises(ConfigError, match="decode probe"):
        probe_clip(width, height, tmp_path)


@pytest.mark.slow
def test_probe_bits_per_pixel_at_1280x960_in_the_documented_band(tmp_path: Path) -> None:
    # docs/data.md: Tesla's 1280 x 960 dashcam recordings carry 0.04-0.10 bit/pixel, the data
    # set's rendered scenes 0.08 at this size; the probe must sit near that band to decode alike
    path = probe_clip(1280, 960, tmp_path)
    bpp = path.stat().st_size * 8 / (PROBE_FRAMES * 1280 * 960)
    assert 0.04 <= bpp <= 0.15
