"""Single-core H.264 decode rate at any frame size, from a short synthetic clip encoded once.

`measure_decode_fps_at(width, height)` encodes `PROBE_FRAMES` frames of a moving test pattern
at that size with the data set's settings (libx264, yuv420p, CRF 23, GOP 8, no B-frames; see
`dojo.data.video`), keeps the MP4 in a cache folder, and times decoding it to RGB on one thread
(`measure_decode_fps`: frames per CPU-second of this process, container open and YUV-to-RGB
included). Measuring at the size that matters replaces scaling a small-frame rate by pixel count,
which per-frame fixed costs make pessimistic (the rendered 96 x 64 data set decodes at 51-66
Mpixel/s on one core, this probe at 1280 x 960 at 330-370 Mpixel/s; docs/data.md).

Why this pattern. H.264 decode time grows with the bits to entropy-decode and the residual blocks
to reconstruct, so the clip must carry about as many bits per pixel as the footage being modelled.
The pattern is a random-phase texture with amplitude spectrum 1/f^`PATTERN_BETA` (luminance plus
weaker chroma) that pans by a fixed fraction of the frame per frame, the same view at every size.
With beta = 1 (the spectrum of natural images) at full contrast everywhere it codes at 0.74 bits
per pixel at 1280 x 960, far above real driving footage, which has large smooth regions (sky,
road); beta = 2 codes at ~0.10 bit/pixel, close to the data set's own rendered scenes at that size
(0.08 bit/pixel; rendering them costs ~1.5 s per 1280 x 960 frame, too slow for a quick probe)
and to Tesla's 1280 x 960 dashcam recordings (0.04-0.10 bit/pixel, see docs/data.md). Sensor
noise is left out: at CRF 18 it was coded faithfully (sigma 2 levels gave 0.5 bit/pixel).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

from dojo.data.video import CRF, GOP, encode_mp4, measure_decode_fps, probe
from dojo.errors import ConfigError, DojoError

PATTERN_BETA = 2.0
PROBE_FRAMES = 2 * GOP  # two keyframe intervals: the I/P frame mix of a long stream
PROBE_FPS = 10.0
PAN_PER_FRAME = (1 / 320, 1 / 960)  # pan per frame, fractions of (width, height)
_VERSION = 2  # bump when the pattern or settings change, so stale cached clips are not reused


def default_cache_dir() -> Path:
    """Where probe clips are kept: $DOJO_CACHE/decode, else <temp dir>/dojo-cache/decode."""
    root = os.environ.get("DOJO_CACHE") or str(Path(tempfile.gettempdir()) / "dojo-cache")
    return Path(root) / "decode"


def pattern_frames(width: int, height: int, frames: int = PROBE_FRAMES,
                   seed: int = 0) -> np.ndarray:
    """(frames, height, width, 3) uint8 RGB: the panning 1/f^beta texture (module docstring).

    The texture is drawn at the frame size plus the pan, so its statistics relative to the
    frame (and the pan in fractions of the frame) are the same at every size.
    """
    _check_size(width, height)
    dx = max(1, round(width * PAN_PER_FRAME[0]))  # pixels per frame
    dy = max(1, round(height * PAN_PER_FRAME[1]))
    rng = np.random.default_rng(seed)
    tex_h, tex_w = height + dy * frames, width + dx * frames
    fy = np.fft.fftfreq(tex_h)[:, None]   # cycles/pixel
    fx = np.fft.rfftfreq(tex_w)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0
    amp = f ** -PATTERN_BETA
    amp[0, 0] = 0.0  # zero mean; the grey level is set below
    lum, c1, c2 = (np.fft.irfft2(amp * np.exp(2j * np.pi * rng.random(amp.shape)),
                                 s=(tex_h, tex_w)) for _ in range(3))
    rgb = np.stack([lum + 0.3 * c1, lum + 0.3 * c2, lum - 0.15 * (c1 + c2)], axis=-1)
    rgb = (rgb - rgb.mean()) / rgb.std() * 45.0 + 120.0  # mean and contrast of daylight footage
    texture = np.clip(rgb, 0, 255).astype(np.uint8)  # (tex_h, tex_w, 3)
    return np.stack([texture[k * dy:k * dy + height, k * dx:k * dx + width]
                     for k in range(frames)])


def probe_clip(width: int, height: int, cache_dir: str | Path | None = None) -> Path:
    """The cached probe MP4 for `width` x `height`, encoded on first use.

    Written under a temporary name and renamed into place, so concurrent callers never see a
    half-written file; a cached file whose header does not match is encoded again.
    """
    _check_size(width, height)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / (f"pattern-v{_VERSION}-{width}x{height}-t{PROBE_FRAMES}-g{GOP}-crf{CRF}"
                     f"-beta{PATTERN_BETA:g}.mp4")
    if path.is_file() and _intact(path, width, height):
        return path
    tmp = folder / f".{path.name}.tmp-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        encode_mp4(tmp, pattern_frames(width, height), PROBE_FPS)
        os.replace(tmp, path)
    except OSError as err:
        _remove(tmp)
        raise DojoError(f"{folder}: cannot write the decode probe clip ({err})") from None
    except BaseException:  # an encode error, Ctrl-C or SIGTERM: leave no temporary file
        _remove(tmp)
        raise
    return path


def _remove(tmp: Path) -> None:
    """Remove a temporary file if it is there; under a file where a folder was expected
    (DOJO_CACHE=afile), unlink raises NotADirectoryError, which hid the error being reported."""
    with contextlib.suppress(OSError):
        tmp.unlink()


def measure_decode_fps_at(width: int, height: int, seconds: float = 0.5,
                          cache_dir: str | Path | None = None) -> float:
    """Frames per CPU-second that one core decodes to RGB at `width` x `height` pixels.

    Decodes the cached probe clip (`probe_clip`) repeatedly for at least `seconds` of wall time
    on one decoder thread. First call at a size also encodes the clip (about 1.5 s at
    1280 x 960 on one core); later calls only decode.
    """
    return measure_decode_fps(probe_clip(width, height, cache_dir), seconds)


def _intact(path: Path, width: int, height: int) -> bool:
    try:
        info = probe(path)
    except DojoError:
        return False
    return (info.width, info.height, info.frames) == (width, height, PROBE_FRAMES)


def _check_size(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or value < 16 or value % 2:
            raise ConfigError("decode probe", name, value,
                              "an even number of pixels >= 16 (H.264 yuv420p halves chroma)")
