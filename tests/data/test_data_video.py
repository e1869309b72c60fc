"""Encode/decode: frame-exact seeks, fidelity of the lossy encode, determinism of synth."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import pytest

from dojo.data.geometry import make_rig
from dojo.data.synth import SynthConfig, clip_scene, render_clip, synthesize
from dojo.data.video import (
    GOP,
    VideoReader,
    decode_all,
    encode_mp4,
    measure_decode_fps,
    probe,
    x264_options,
)

# H.264 at CRF 23 without macroblock tree, 4:2:0 chroma: per-frame PSNR of synthesized clips
# measured 30.5-39.2 dB at 64x48 and 32.8-40.4 dB at 96x64 (30.3-39.3 and 33.2-40.3 at CRF 18
# with it; sharp box edges lose most in the halved chroma); 28 dB leaves margin while still
# failing on a colour-order, geometry or frame-order mistake (those give well under 20 dB).
PSNR_MIN_DB = 28.0


def _moving_frames(n: int, w: int = 64, h: int = 48) -> np.ndarray:
    """Smooth frames that differ per frame (a moving gradient and square), (n, h, w, 3) uint8."""
    v, u = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), np.uint8)
    for k in range(n):
        out[k, ..., 0] = (u * 3 + k * 9) % 256
        out[k, ..., 1] = (v * 4 + k * 5) % 256
        out[k, ..., 2] = 128
        out[k, 10:20, (2 * k) % (w - 10):(2 * k) % (w - 10) + 10] = 255
    return out


@pytest.fixture(scope="module")
def clip20(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    encode_mp4(path, _moving_frames(20), fps=10)
    return path


def test_keyframes_every_gop_frames(clip20: Path) -> None:
    with av.open(str(clip20)) as c:
        keys = [p.is_keyframe for p in c.demux(c.streams.video[0]) if p.size]
    assert [k for k, key in enumerate(keys) if key] == list(range(0, 20, GOP))
    info = probe(clip20)
    assert (info.width, info.height, info.frames, info.fps) == (64, 48, 20, 10.0)


def test_seek_gives_the_same_frame_as_sequential_decode(clip20: Path) -> None:
    sequential = decode_all(clip20)
    assert sequential.shape == (20, 48, 64, 3)
    for k in range(20):  # a fresh reader per frame: every read is a seek
        np.testing.assert_array_equal(VideoReader(clip20, 10.0).read(k, 1)[0], sequential[k])
    reader = VideoReader(clip20, 10.0)  # one reader, jumping back and forth, windows
    for start, count in ((13, 3), (2, 4), (6, 5), (11, 2), (0, 20), (17, 3)):
        np.testing.assert_array_equal(reader.read(start, count), sequential[start:start + count])
    reader.close()


def test_decoded_frames_follow_the_source_order(clip20: Path) -> None:
    source = _moving_frames(20).astype(float)
    decoded = decode_all(clip20).astype(float)
    # each decoded frame is closest to its own source frame, not a neighbour
    for k in range(20):
        errors = [np.mean((decoded[k] - source[j]) ** 2) for j in range(20)]
        assert int(np.argmin(errors)) == k


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(float) - b.astype(float)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def test_decoded_clip_approximates_the_render(tiny_set: Path, tiny_cfg: SynthConfig) -> None:
    rig = make_rig(tiny_cfg.cameras, tiny_cfg.width, tiny_cfg.height)
    views, _ = render_clip(clip_scene(tiny_cfg, 2), rig, tiny_cfg.grid, tiny_cfg.range_m)
    for cam, rendered in zip(rig, views, strict=True):
        decoded = decode_all(tiny_set / "clip_0002" / f"{cam.name}.mp4")
        assert decoded.shape == rendered.shape
        worst = min(_psnr(decoded[k], rendered[k]) for k in range(len(decoded)))
        assert worst > PSNR_MIN_DB, f"{cam.name}: {worst:.1f} dB"
        # and a frame is not mistaken for the next one
        assert _psnr(decoded[3], rendered[3]) > _psnr(decoded[3], rendered[4])


def test_synth_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    cfg = SynthConfig(clips=2, cameras=2, frames=3, width=32, height=32, seed=5, grid=8)
    synthesize(tmp_path / "a", cfg)
    synthesize(tmp_path / "b", cfg)
    synthesize(tmp_path / "c", SynthConfig(**{**cfg.__dict__, "seed": 6}))
    for clip in ("clip_0000", "clip_0001"):
        a, b = tmp_path / "a" / clip, tmp_path / "b" / clip
        assert (a / "labels.npz").read_bytes() == (b / "labels.npz").read_bytes()
        for cam in ("front", "front_left"):
            np.testing.assert_array_equal(decode_all(a / f"{cam}.mp4"),
                                          decode_all(b / f"{cam}.mp4"))
    assert ((tmp_path / "a" / "manifest.json").read_text()
            == (tmp_path / "b" / "manifest.json").read_text())
    la = np.load(tmp_path / "a" / "clip_0000" / "labels.npz")
    lc = np.load(tmp_path / "c" / "clip_0000" / "labels.npz")
    assert not np.array_equal(la["ego_poses"], lc["ego_poses"]), "seed had no effect"


def test_encoded_bytes_do_not_depend_on_the_cpus_simd(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The bytes `encode_mp4` writes equal those it writes with x264's SIMD held to SSE2 and to
    AVX2, so a machine with other vector units writes the same data set. With x264's
    macroblock tree on, its AVX-512 code gave other bytes than the SSE2 and AVX2 code on an
    AVX-512 machine (docs/data.md, "Video encoding"); without AVX-512 this checks less."""
    import dojo.data.video as video

    frames = _moving_frames(8, w=96, h=64)
    encode_mp4(tmp_path / "native.mp4", frames, fps=10)
    native = tmp_path.joinpath("native.mp4").read_bytes()
    options = x264_options()
    assert "mbtree=0" in options["x264-params"]
    for simd in ("sse2", "avx2"):
        held = {**options, "x264-params": f"{options['x264-params']}:asm={simd}"}
        monkeypatch.setattr(video, "x264_options", lambda gop, crf, held=held: held)
        encode_mp4(tmp_path / f"{simd}.mp4", frames, fps=10)
        assert tmp_path.joinpath(f"{simd}.mp4").read_bytes() == native, simd


@pytest.mark.slow
def test_encoding_the_same_frames_gives_the_same_bytes_every_time(tmp_path: Path) -> None:
    """2,000 encodes of one 8-frame 96 x 64 clip in one process, with uninitialised heap
    allocations of varying size held in between, are byte-identical. With x264's macroblock
    tree, 5 to 39 of 5,000 such encodes came out different on an AVX-512 machine (a clip of a
    48-clip set changed between fresh syntheses; docs/data.md, "Video encoding")."""
    frames = _moving_frames(8, w=96, h=64)
    rng = np.random.default_rng(1)
    held: list[np.ndarray] = []
    digests = set()
    for k in range(2000):
        held.append(np.empty(int(rng.integers(1, 100_000)), np.uint8))
        if len(held) > 50:
            held.pop(int(rng.integers(len(held))))
        path = tmp_path / f"{k % 2}.mp4"
        encode_mp4(path, frames if k % 2 else frames.copy(), fps=10)
        digests.add(path.read_bytes())
    assert len(digests) == 1


def test_interrupted_synth_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dojo.data.synth as synth

    def boom(done: int, total: int) -> None:
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synth.synthesize(tmp_path / "set", SynthConfig(clips=2, cameras=1, frames=2), boom)
    assert list(tmp_path.iterdir()) == []


def test_measure_decode_fps_counts_frames_over_time(clip20: Path) -> None:
    fps = measure_decode_fps(clip20, seconds=0.05)
    # 20 frames of 64x48 decode far faster than 50 frames/s and slower than 10 M frames/s
    assert 50 < fps < 1e7
