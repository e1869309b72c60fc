"""The recorded decode calibration: single-core H.264 decode rates measured once, shipped as data.

`dojo train` feeds a decode rate (frames per CPU-second on one core) into the simulated data path.
Measured live, on a shared machine, that rate moves from run to run and so do the simulated step
and the hosts it needs; so by default the rates come from `decode_calibration.toml` beside this
module, which names the machine, the date, the software and the command that measured them
(`bench/bench_decode.py --record`). `dojo train occupancy --measure-decode` measures live instead.

The file holds two lists of points (width, height, frames/s per core):
- `rendered`: the data set's own clips (`dojo data synth`), the rate at the data set's frame size;
- `probe`: the synthetic probe clip of `dojo.data.decoderate`, the rate at the large preset's.
A size between recorded points is interpolated on the time per frame, which is affine in the
pixel count between two points (a fixed per-frame cost plus a per-pixel cost, the shape that
makes small frames decode far below their pixel share, docs/data.md); outside the recorded range
the nearest segment is extended, never below the per-frame cost of the nearest point.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dojo.errors import ConfigError

CALIBRATION = Path(__file__).with_name("decode_calibration.toml")
KINDS = ("rendered", "probe")


@dataclass(frozen=True)
class DecodePoint:
    """A recorded rate: frames per CPU-second on one core at `width` x `height` pixels."""

    width: int
    height: int
    frames_per_s: float

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class DecodeCalibration:
    """The recorded rates (module docstring) and where they come from."""

    machine: str
    date: str
    software: str
    command: str
    rendered: tuple[DecodePoint, ...]
    probe: tuple[DecodePoint, ...]

    @property
    def label(self) -> str:
        """Where the rates were measured, for reports: 'recorded on MACHINE, DATE'."""
        return f"recorded on {self.machine}, {self.date}"

    def fps_at(self, kind: str, width: int, height: int) -> float:
        """Frames/s per core at `width` x `height` for clips of `kind` ("rendered" or "probe")."""
        points = self.rendered if kind == "rendered" else self.probe
        return interpolate_fps(points, width, height)


def interpolate_fps(points: tuple[DecodePoint, ...], width: int, height: int) -> float:
    """Frames/s at `width` x `height` from recorded points: a recorded size exactly, else the
    time per frame interpolated linearly in pixels between the two neighbouring points, or the
    nearest segment extended outside the range. Bounds keep the extension physical: a larger
    frame never decodes faster than the largest point, and a smaller frame's time never falls
    faster than its pixel count (a fixed per-frame cost is never negative)."""
    ordered = sorted(points, key=lambda p: p.pixels)
    pixels = width * height
    for p in ordered:
        if (p.width, p.height) == (width, height):
            return p.frames_per_s
    first, last = ordered[0], ordered[-1]
    if len(ordered) == 1 or first.pixels == last.pixels:  # no slope known: scale by pixels
        return first.frames_per_s * first.pixels / pixels
    upper = next((k for k, p in enumerate(ordered) if p.pixels >= pixels), len(ordered) - 1)
    a, b = ordered[max(0, upper - 1)], ordered[max(1, upper)]
    ta, tb = 1 / a.frames_per_s, 1 / b.frames_per_s  # seconds per frame
    slope = (tb - ta) / (b.pixels - a.pixels) if b.pixels != a.pixels else 0.0
    seconds = ta + slope * (pixels - a.pixels)
    if pixels < first.pixels:
        seconds = max(seconds, pixels / first.pixels / first.frames_per_s)
    elif pixels > last.pixels:
        seconds = max(seconds, 1 / last.frames_per_s)
    return 1 / seconds


def load_calibration(path: str | Path = CALIBRATION) -> DecodeCalibration:
    """Read and check a calibration file; errors name the file, the field and the value."""
    source = str(path)
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(source, "file", source, f"a readable file ({err.strerror})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(source, "file", source, f"valid TOML ({err})") from None
    text = {}
    for key in ("machine", "date", "software", "command"):
        value = raw.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(source, key, value, "a non-empty string")
        text[key] = value
    lists = {kind: _points(source, kind, raw.get(kind)) for kind in KINDS}
    return DecodeCalibration(rendered=lists["rendered"], probe=lists["probe"], **text)


def _points(source: str, kind: str, rows: Any) -> tuple[DecodePoint, ...]:
    if not isinstance(rows, list) or not rows:
        raise ConfigError(source, kind, rows, "a non-empty list of {width, height, frames_per_s}")
    out = []
    for k, row in enumerate(rows):
        where = f"{kind}[{k}]"
        if not isinstance(row, dict):
            raise ConfigError(source, where, row, "a table {width, height, frames_per_s}")
        for key in ("width", "height"):
            if not isinstance(row.get(key), int) or row[key] < 16:
                raise ConfigError(source, f"{where}.{key}", row.get(key), "an integer >= 16 pixels")
        fps = row.get("frames_per_s")
        if isinstance(fps, bool) or not isinstance(fps, int | float) or not fps > 0:
            raise ConfigError(source, f"{where}.frames_per_s", fps, "a number > 0 (frames/s)")
        out.append(DecodePoint(row["width"], row["height"], float(fps)))
    return tuple(out)
