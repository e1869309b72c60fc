"""HtmlReport and the plot helpers: well-formed self-contained HTML, PNGs that decode to what was
put in, plots whose drawn data equal their inputs, deterministic bytes, atomic writes."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np
import pytest
from report_checks import PNG_SIGNATURE, decode, parse

from dojo.errors import DojoError
from dojo.report import (
    HtmlReport,
    plot_breakdown,
    plot_curves,
    plot_heatmap,
    plot_scaling,
    plot_timeline,
)
from dojo.report.html import figure_png
from dojo.sim.session import Simulated
from dojo.units import si


def test_report_is_well_formed_self_contained_and_escaped(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2), dpi=100)
    fig.add_subplot().plot([0, 1], [1, 0])
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20             # (H, W)
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    report = (HtmlReport("a <b> & c").heading("Numbers").paragraph("x < y & z")
              .table([("one", 1234567, 0.5), ("two", True, "<i>")], ["name", "n", "f"])
              .figure(fig, "a line").image(grey, "grey").image(rgb).json_block({"k": [1, "<"]}))
    c = parse(report.html())
    assert c.counts["figure"] == 3 == report.figures and c.counts["img"] == 3
    assert c.counts.get("script", 0) == 0 and c.counts.get("b", 0) == 0 and "i" not in c.counts
    text = "".join(c.text)
    assert "a <b> & c" in text and "x < y & z" in text and "1,234,567" in text
    assert all(src.startswith("data:") for src in c.images)     # nothing fetched from outside
    assert decode(c.images[0]).size == (300, 200)               # 3 x 2 inches at 100 dpi
    # Arrays come back pixel for pixel (PIL is an independent PNG decoder).
    back = np.asarray(decode(c.images[1]).convert("RGB"))
    assert (back == np.repeat(grey[:, :, None], 3, axis=2)).all()
    assert (np.asarray(decode(c.images[2]).convert("RGB")) == rgb).all()
    # Raw PNG bytes are embedded unchanged.
    raw = figure_png(_small_figure())
    c2 = parse(HtmlReport("t").image(raw).html())
    assert base64.b64decode(c2.images[0].split(",", 1)[1]) == raw


def test_bad_images_are_refused() -> None:
    with pytest.raises(ValueError, match="not a PNG"):
        HtmlReport("t").image(b"GIF89a...")
    with pytest.raises(ValueError, match="expected"):
        HtmlReport("t").image(np.zeros((2, 3, 5)))


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = HtmlReport("r").paragraph("hello")
    path = tmp_path / "r.html"
    path.write_text("old")
    monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(DojoError, match="cannot write there"):  # one line, not a traceback
        report.write(path)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["r.html"]
    monkeypatch.undo()
    assert report.write(path) == path
    assert "hello" in path.read_text() and os.listdir(tmp_path) == ["r.html"]
    fresh = report.write(tmp_path / "fresh.html")
    assert fresh.stat().st_mode & 0o777 == 0o644       # not the 0600 of a temporary file


def _small_figure() -> object:
    return plot_curves({"loss": [3.0, 2.0, 1.5]}, "step", "loss")


def test_figures_render_to_the_same_bytes() -> None:
    a = figure_png(plot_breakdown({"x": {"compute": 1.0, "bubble": 0.5}}))
    b = figure_png(plot_breakdown({"x": {"compute": 1.0, "bubble": 0.5}}))
    assert a == b and a.startswith(PNG_SIGNATURE)


def _bars(ax: object) -> list[tuple[float, float, float]]:
    """(x centre, bottom, height) of every bar patch of an Axes."""
    return [(p.get_x() + p.get_width() / 2, p.get_y(), p.get_height())
            for c in ax.containers for p in c]  # type: ignore[attr-defined]


def test_breakdown_bars_stack_to_the_step_time() -> None:
    data = {"a": {"compute": 2e-3, "bubble": 1e-3, "optimizer": 0.5e-3},
            "b": {"compute": 1e-3, "exposed_comm": 3e-3}}
    ax = plot_breakdown(data).axes[0]
    assert "ms" in ax.get_ylabel()
    tops: dict[float, float] = {}
    for x, bottom, height in _bars(ax):
        tops[x] = max(tops.get(x, 0.0), bottom + height)
    # Totals in ms: 2 + 1 + 0.5 and 1 + 3.
    assert sorted(tops.values()) == pytest.approx([3.5, 4.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]


def test_timeline_draws_every_span(interleaved: Simulated) -> None:
    r = interleaved.result
    ax = plot_timeline(r).axes[0]
    drawn = {c.get_gid(): len(c.get_paths()) for c in ax.collections}
    pp = interleaved.program.plan.pp
    assert sum(drawn[f"{k}{s}"] for k in "FB" for s in range(pp)) == len(r.spans)
    assert sum(drawn[f"optimizer{s}"] for s in range(pp)) == pp
    assert ax.get_xlim()[1] == pytest.approx(r.step_time_s * 1e3)   # ms for a 3 ms step


def test_scaling_has_log_x_and_a_linear_ideal_line() -> None:
    pts = [(8, 100.0), (64, 700.0), (16, 190.0)]
    ax = plot_scaling({"dojo": pts}).axes[0]
    assert ax.get_xscale() == "log"
    lines = {ln.get_gid(): ln for ln in ax.get_lines()}
    assert list(lines["series:dojo"].get_xdata()) == [8, 16, 64]
    assert list(lines["ideal:dojo"].get_ydata()) == pytest.approx([100.0, 200.0, 800.0])


def test_heatmap_shows_the_matrix_and_checks_labels() -> None:
    m = np.array([[0.1, 0.9, 0.5], [1.0, 0.0, 0.25]])
    ax = plot_heatmap(m, ["r0", "r1"], ["c0", "c1", "c2"], "link use").axes[0]
    assert np.array_equal(ax.images[0].get_array(), m)
    assert ax.get_title() == "link use"
    assert [t.get_text() for t in ax.texts][:3] == ["0.1", "0.9", "0.5"]
    with pytest.raises(ValueError, match="expected"):
        plot_heatmap(m, ["r0"], ["c0", "c1", "c2"], "bad")


def test_curves_accept_values_or_xy_pairs() -> None:
    ax = plot_curves({"loss": [3.0, 2.0], "iou": ([10, 20, 30], [0.1, 0.2, 0.4])},
                     "step", "value").axes[0]
    lines = {ln.get_gid(): ln for ln in ax.get_lines()}
    assert list(lines["series:loss"].get_xdata()) == [0, 1]
    assert list(lines["series:iou"].get_xdata()) == [10, 20, 30]
    with pytest.raises(ValueError, match="3 x values and 2 y values"):
        plot_curves({"bad": ([1, 2, 3], [1.0, 2.0])}, "x", "y")


def test_si_prefixes() -> None:
    assert si(3.2e-3, "s") == "3.2 ms"
    assert si(1.1e18, "FLOP/s") == "1.1 EFLOP/s"
    assert si(0, "B") == "0 B"
    assert si(12345, "", digits=3) == "12.3 k"


@pytest.mark.parametrize(("where", "says"), [
    (lambda d: d, "is a folder"),
    (lambda d: d / "missing" / "r.html", "does not exist"),
    (lambda d: d / "file.txt" / "r.html", "is not a folder"),
    (lambda d: Path("/proc/r.html"), "is not writable"),
    (lambda d: Path(""), "expected a file path"),
])
def test_report_write_refuses_unusable_paths_in_one_line(tmp_path: Path, where: object,
                                                         says: str) -> None:
    from dojo.errors import DojoError

    (tmp_path / "file.txt").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(DojoError, match=says) as err:
        HtmlReport("t").write(where(tmp_path), "--report")  # type: ignore[operator]
    assert "\n" not in str(err.value) and "--report" in str(err.value)
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(("name", "magic"), [("c.png", PNG_SIGNATURE), ("c.svg", b"<?xml"),
                                             ("c.PDF", b"%PDF-")])
def test_charts_are_written_in_the_format_their_extension_names(
        tmp_path: Path, name: str, magic: bytes) -> None:
    from dojo.report.html import write_figure

    path = write_figure(_small_figure(), tmp_path / name, "--chart")
    assert path.read_bytes().startswith(magic)


def test_charts_refuse_an_unknown_extension(tmp_path: Path) -> None:
    from dojo.errors import DojoError
    from dojo.report.html import write_figure

    with pytest.raises(DojoError, match=r"--chart .*c\.xyz: extension '\.xyz': expected one of"):
        write_figure(_small_figure(), tmp_path / "c.xyz", "--chart")
    assert list(tmp_path.iterdir()) == []
