"""The decode rates a `dojo train` run uses: recorded (the default) or measured live.

Recorded rates come from `dojo.data.decodecal` (a file measured once, naming its machine and
date), so the same options give the same simulated step and metrics.json on every run.
`--measure-decode` measures on this machine instead: the data set's own clips at their frame
size (`measure_decode_fps`, `MEASURE_S` seconds of CPU), and the probe clip at the large preset's
(`measure_decode_fps_at`); those figures then move with the machine's load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dojo.data.decodecal import CALIBRATION, load_calibration

MEASURE_S = 0.5  # long enough to be steady, short for `make run`
RECORDED = "recorded"
MEASURED = "measured"


@dataclass(frozen=True)
class DecodeRate:
    """Frames per CPU-second on one core at `size` (width, height) pixels, and whence:
    `source` is "recorded" or "measured"; `origin` says where, for the report."""

    frames_per_s: float
    size: tuple[int, int]
    source: str
    origin: str


def _recorded_origin() -> str:
    cal = load_calibration()
    return f"{cal.label} ({CALIBRATION.name}, {cal.software})"


def large_rate(size: tuple[int, int], measure: bool) -> DecodeRate:
    """The rate at the large preset's frame size, on the synthetic probe clip."""
    w, h = size
    if measure:
        from dojo.data.decoderate import measure_decode_fps_at

        return DecodeRate(measure_decode_fps_at(w, h, MEASURE_S), size, MEASURED,
                          "measured live on this machine (probe clip)")
    return DecodeRate(load_calibration().fps_at("probe", w, h), size, RECORDED,
                      _recorded_origin())


def data_rate(size: tuple[int, int], measure: bool, clips: Path | str) -> DecodeRate:
    """The rate at the data set's frame size: on its clips in `clips`, or recorded."""
    w, h = size
    if measure:
        from dojo.data.video import measure_decode_fps

        return DecodeRate(measure_decode_fps(clips, MEASURE_S), size, MEASURED,
                          f"measured live on this machine ({clips})")
    return DecodeRate(load_calibration().fps_at("rendered", w, h), size, RECORDED,
                      _recorded_origin())
