"""The recorded decode calibration: the shipped file reads and names its origin; sizes between
recorded points follow the per-frame cost model in closed form; a bad file is one clear error."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from dojo.data.decodecal import CALIBRATION, DecodePoint, interpolate_fps, load_calibration
from dojo.errors import ConfigError

# Two points of an exact affine cost: t(p) = 50 us + 1 ns x p seconds per frame.
A = DecodePoint(100, 100, 1 / (50e-6 + 1e-9 * 10_000))     # 10,000 pixels
B = DecodePoint(1000, 1000, 1 / (50e-6 + 1e-9 * 1_000_000))  # 1,000,000 pixels


def test_shipped_file_names_machine_date_and_covers_both_sizes() -> None:
    raw = tomllib.loads(CALIBRATION.read_text())
    cal = load_calibration()
    assert cal.machine == raw["machine"] and cal.date == raw["date"]
    assert cal.label == f"recorded on {raw['machine']}, {raw['date']}"
    # The default data set (96 x 64) and the large preset (1280 x 960) are recorded exactly.
    assert cal.fps_at("rendered", 96, 64) == next(
        p["frames_per_s"] for p in raw["rendered"] if (p["width"], p["height"]) == (96, 64))
    assert cal.fps_at("probe", 1280, 960) == next(
        p["frames_per_s"] for p in raw["probe"] if (p["width"], p["height"]) == (1280, 960))


def test_between_points_the_time_per_frame_is_affine_in_pixels() -> None:
    for pixels in (40_000, 250_000, 640_000):
        side = int(pixels ** 0.5)
        expected = 1 / (50e-6 + 1e-9 * side * side)
        assert interpolate_fps((A, B), side, side) == pytest.approx(expected, rel=1e-12)


def test_outside_the_points_the_extension_stays_physical() -> None:
    # Above: the same affine cost; below: never faster than pixels allow (t >= t_A x p / p_A).
    assert interpolate_fps((A, B), 2000, 2000) == pytest.approx(1 / (50e-6 + 4e-3), rel=1e-12)
    assert interpolate_fps((A, B), 50, 50) == pytest.approx(1 / (50e-6 + 2.5e-6), rel=1e-12)
    flat = (A, DecodePoint(1000, 1000, A.frames_per_s * 2))  # noisy: bigger decoded faster
    assert interpolate_fps(flat, 2000, 2000) <= A.frames_per_s * 2
    assert interpolate_fps((A,), 200, 100) == pytest.approx(A.frames_per_s / 2, rel=1e-12)


@pytest.mark.parametrize("text, field", [
    ("", "machine"),
    ('machine = "m"\ndate = "d"\nsoftware = "s"\ncommand = "c"\n', "rendered"),
    ('machine = "m"\ndate = "d"\nsoftware = "s"\ncommand = "c"\n'
     '[[rendered]]\nwidth = 96\nheight = 64\nframes_per_s = 0\n', "frames_per_s"),
    ("machine = ", "valid TOML"),
])
def test_bad_file_is_one_error_naming_it(text: str, field: str, tmp_path: Path) -> None:
    path = tmp_path / "cal.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=field) as err:
        load_calibration(path)
    assert str(path) in str(err.value)
