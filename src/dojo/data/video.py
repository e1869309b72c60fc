"""H.264 MP4 encode and decode with PyAV, frame-exact seeking, and decode-rate measurement.

Encoding: libx264, yuv420p, constant quality CRF 23, a fixed keyframe interval of `GOP` = 8
frames (scene-cut keyframes off) and no B-frames, so decode order equals presentation order and
reaching any frame costs at most 7 extra decodes after a seek. Frame k of a stream is the frame
whose presentation time is k / fps seconds after the stream start.

The same frames give the same bytes on every run and every x86 machine (`x264_options`): one
encoder thread, and no macroblock-tree rate control. x264's macroblock tree propagates costs in
single-precision floating point in SIMD code chosen by the CPU, and the versions disagree (its
AVX-512 version gave other bytes than its AVX2 and SSE2 versions, and 1 encode in 130 to 1,000 of
the same frames came out different within one process; docs/data.md, "Video encoding"). Without
it the stream costs more bits at a given CRF, so CRF 23 here carries about what CRF 18 with it
did (0.10 against 0.098 bit/pixel on the 1280 x 960 decode probe).

Every failure to open or decode a file is raised as `DojoError` naming the file.

YUV-to-RGB conversion goes through one reused `VideoReformatter` per reader, with threads=1:
PyAV's default (threads=0, auto) starts a swscale thread pool for each conversion context, which
costs more than converting a small frame, and a process holding such threads can deadlock the
DataLoader workers it forks (seen in tests/data before this setting).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from dojo.errors import DojoError

GOP = 8
CRF = 23
_AV_ERRORS = (av.FFmpegError, OSError)


def encode_mp4(path: Path, frames: np.ndarray, fps: float, gop: int = GOP, crf: int = CRF) -> None:
    """Write RGB `frames` (T, H, W, 3) uint8 as an H.264 MP4 at `fps` frames per second.

    H and W must be even (yuv420p halves the chroma planes).
    """
    t, h, w, _ = frames.shape
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = dict(x264_options(gop, crf))
        for k in range(t):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frames[k], format="rgb24")))
        out.mux(stream.encode(None))


def x264_options(gop: int = GOP, crf: int = CRF) -> dict[str, str]:
    """The libx264 options of every encode: CRF `crf`, keyframes exactly every `gop` frames,
    no B-frames, and what makes the bytes reproducible (module docstring): one thread, no
    macroblock tree (`mbtree=0`)."""
    return {"crf": str(crf), "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0",
            "bf": "0", "threads": "1", "x264-params": "mbtree=0"}


@dataclass(frozen=True)
class VideoInfo:
    """What the container header says: size (pixels), frame count and rate (frames/s)."""

    width: int
    height: int
    frames: int
    fps: float


def open_file(path: Path | str) -> tuple[Any, Any]:
    """(PyAV container, file object or None) of a local file or an fsspec URL: a URL is opened
    through fsspec and PyAV reads the file object (close both: `close_file`)."""
    if "://" not in str(path):
        return av.open(str(path)), None
    from dojo.data import store

    fs, inner = store.resolve(str(path))
    handle = fs.open(inner, "rb")
    try:
        return av.open(handle), handle
    except BaseException:
        handle.close()
        raise


def close_file(container: Any, handle: Any) -> None:
    """Close what `open_file` opened."""
    try:
        container.close()
    finally:
        if handle is not None:
            handle.close()


def probe(path: Path | str) -> VideoInfo:
    """Read the header of a video file (path or fsspec URL); `DojoError` naming the file when
    it cannot be read."""
    handle = None
    try:
        container, handle = open_file(path)
        with container:
            if not container.streams.video:
                raise DojoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or 0)
            frames = int(stream.frames or 0)
            if frames == 0 and stream.duration and stream.time_base and rate:
                frames = round(float(stream.duration * stream.time_base) * rate)
            cc = stream.codec_context
            return VideoInfo(int(cc.width), int(cc.height), frames, rate)
    except _AV_ERRORS as err:
        raise DojoError(f"{path}: cannot read video ({_reason(err)})") from None
    finally:
        if handle is not None:
            handle.close()


class VideoReader:
    """Random access to the frames of one video file; opens the file on first use.

    `read(start, count)` seeks to the keyframe at or before frame `start` and decodes forward;
    a read that continues exactly where the previous one stopped skips the seek. One reader
    belongs to one process (do not share across fork).
    """

    def __init__(self, path: Path | str, fps: float) -> None:
        self.path = path  # a local path or an fsspec URL
        self.fps = fps
        self._container: Any = None
        self._handle: Any = None  # the fsspec file object PyAV reads a URL from
        self._stream: Any = None
        self._frames: Iterator[Any] | None = None
        self._next = -1
        self._rgb = VideoReformatter()
        self._pts0 = 0
        self._seconds_per_tick = 0.0

    def read(self, start: int, count: int) -> np.ndarray:
        """Frames start .. start+count-1 as (count, H, W, 3) uint8 RGB."""
        try:
            return np.stack([_rgb(self._rgb, f) for f in self._read(start, count)])
        except _AV_ERRORS as err:
            self.close()
            raise DojoError(f"{self.path}: cannot decode ({_reason(err)})") from None

    def read_planar(self, start: int, count: int, out: np.ndarray) -> None:
        """Write frames start .. start+count-1 into `out` (count, 3, H, W): float32 in [0, 1] or
        uint8 0..255, by the dtype of `out`.

        The loader's path: swscale writes planar RGB and one cast-and-scale per plane lands it in
        the batch, with no interleaved-to-planar transpose and no staging copy.
        """
        try:
            for k, frame in enumerate(self._read(start, count)):
                _planar(self._rgb, frame, out[k])
        except _AV_ERRORS as err:
            self.close()
            raise DojoError(f"{self.path}: cannot decode ({_reason(err)})") from None

    def _read(self, start: int, count: int) -> list[Any]:
        if self._container is None:
            self._container, self._handle = open_file(self.path)
            if not self._container.streams.video:
                raise DojoError(f"{self.path}: no video stream")
            self._stream = self._container.streams.video[0]
            self._stream.codec_context.thread_count = 1  # parallelism comes from workers
            self._pts0 = self._stream.start_time or 0
            self._seconds_per_tick = float(self._stream.time_base)
        if self._frames is None or start != self._next:
            self._seek(start)
        out = self._collect(start, count)
        if out is None:  # the index pointed past the wanted frame: decode from the top
            self._seek(0)
            out = self._collect(start, count)
        if out is None or len(out) < count:
            self.close()
            got = 0 if out is None else len(out)
            raise DojoError(f"{self.path}: frames {start}..{start + count - 1} wanted, "
                            f"only {got} decodable from frame {start} (truncated or corrupt?)")
        self._next = start + count
        return out

    def _seek(self, frame: int) -> None:
        target = self._pts0 + int(round(frame / self.fps / self._seconds_per_tick))
        self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
        self._frames = self._container.decode(self._stream)

    def _collect(self, start: int, count: int) -> list[Any] | None:
        """Decoded frames start..start+count-1 (or fewer at end of file); None when the decoder
        is already past `start`."""
        assert self._frames is not None  # set by _seek; internal invariant, not user input
        out: list[Any] = []
        for frame in self._frames:
            k = self._index(frame)
            if k < start:
                continue
            if k != start + len(out):
                if not out:
                    return None
                raise DojoError(f"{self.path}: frame {start + len(out)} missing (next is {k})")
            out.append(frame)
            if len(out) == count:
                break
        return out

    def _index(self, frame: Any) -> int:
        if frame.pts is None:
            raise DojoError(f"{self.path}: frames carry no timestamps; cannot seek")
        return int(round((frame.pts - self._pts0) * self._seconds_per_tick * self.fps))

    def close(self) -> None:
        """Release the file; the next read reopens it."""
        if self._container is not None:
            close_file(self._container, self._handle)
        self._container = self._stream = self._frames = self._handle = None
        self._next = -1


def decode_all(path: Path) -> np.ndarray:
    """Every frame of `path` in order, decoded sequentially: (T, H, W, 3) uint8 RGB."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            rgb = VideoReformatter()
            return np.stack([_rgb(rgb, f) for f in container.decode(stream)])
    except _AV_ERRORS as err:
        raise DojoError(f"{path}: cannot decode ({_reason(err)})") from None


def video_files(path_or_dir: str | Path) -> list[Path]:
    """`path` itself when a file, else every *.mp4 below the directory, sorted."""
    root = Path(path_or_dir)
    files = [root] if root.is_file() else sorted(root.rglob("*.mp4"))
    if not files:
        raise DojoError(f"{root}: no .mp4 files found")
    return files


def measure_decode_fps(path_or_dir: str | Path, seconds: float = 1.0) -> float:
    """Frames per second that one core decodes to RGB (single decoder thread, whole files).

    Decodes the files round-robin until at least `seconds` of wall time have passed and every file
    was decoded once; includes container open and YUV-to-RGB conversion, as a data loader pays
    them. The rate divides by this process's CPU time, not wall time, so other load on a shared
    machine does not lower it (decoding runs on this one thread only).
    """
    files = video_files(path_or_dir)
    frames, i = 0, 0
    start, cpu0 = time.perf_counter(), time.process_time()
    while i < len(files) or time.perf_counter() - start < seconds:
        frames += _decode_count(files[i % len(files)])
        i += 1
    return frames / max(time.process_time() - cpu0, 1e-9)


def _decode_count(path: Path) -> int:
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            count, rgb = 0, VideoReformatter()
            for frame in container.decode(stream):
                _rgb(rgb, frame)  # the conversion a loader pays is part of decode
                count += 1
            return count
    except _AV_ERRORS as err:
        raise DojoError(f"{path}: cannot decode ({_reason(err)})") from None


def _rgb(reformatter: VideoReformatter, frame: Any) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded frame, reusing `reformatter`'s swscale context."""
    return reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()


PIXEL_SCALE = np.float32(1.0 / 255.0)  # uint8 0..255 to float32 [0, 1]: float32(x) * PIXEL_SCALE


def _planar(reformatter: VideoReformatter, frame: Any, out: np.ndarray) -> None:
    """Write a decoded frame into `out` (3, H, W): float32 RGB in [0, 1] or uint8 RGB.

    Float output is a casting copy per plane and one in-place scale per frame: numpy's
    uint8-to-float32 assignment is a tight loop, while `multiply(plane, scale, out=...)` on a
    strided uint8 plane goes through buffered casting, 2x slower at 96 x 64 (docs/data.md).
    """
    planes = reformatter.reformat(frame, format="gbrp", threads=1).planes  # G, B, R uint8 planes
    h, w = out.shape[1:]
    for channel, plane in zip((1, 2, 0), planes, strict=True):
        data = np.frombuffer(memoryview(plane), np.uint8, count=h * plane.line_size)
        out[channel] = data.reshape(h, plane.line_size)[:, :w]  # drop the row padding
    if out.dtype != np.uint8:
        out *= PIXEL_SCALE  # the frame is still in cache


def _reason(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__
