"""Plots for reports: breakdown bars, pipeline timelines, scaling, heatmaps, training curves.

Each helper returns a `matplotlib.figure.Figure` made without pyplot (no global figure registry,
no interactive backend: it renders through Agg), with fixed sizes, colours and ordering so the
same input draws the same picture. matplotlib is imported inside the functions because importing
it costs about half a second and the CLI imports this package lazily anyway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from dojo.sim.simulate import Result

# Fixed colours per breakdown component and span kind (tab10), so charts agree with each other.
COLOURS = {"compute": "#1f77b4", "exposed_comm": "#ff7f0e", "bubble": "#c7c7c7",
           "recompute": "#9467bd", "optimizer": "#2ca02c", "data": "#8c564b",
           "F": "#1f77b4", "B": "#ff7f0e", "sync": "#d62728"}
_CYCLE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf")


def _figure(width: float = 8.0, height: float = 4.0) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def time_unit(seconds: float) -> tuple[float, str]:
    """(scale, unit) to show durations up to `seconds`: multiply seconds by scale."""
    for scale, unit in ((1.0, "s"), (1e3, "ms"), (1e6, "us")):
        if seconds * scale >= 1.0:
            return scale, unit
    return 1e9, "ns"


def plot_breakdown(results_by_name: Mapping[str, Result | Mapping[str, float]]) -> Figure:
    """Stacked bars, one per name, of the step-time breakdown (`Result.breakdown_s`), in the
    unit that suits the largest step. Components keep the order of first appearance."""
    import numpy as np

    if not results_by_name:
        raise ValueError("plot_breakdown needs at least one result")
    table: dict[str, dict[str, float]] = {
        name: dict(r if isinstance(r, Mapping) else r.breakdown_s)
        for name, r in results_by_name.items()}
    parts = list(dict.fromkeys(k for b in table.values() for k in b))
    scale, unit = time_unit(max(sum(b.values()) for b in table.values()))
    fig = _figure(max(4.0, 1.2 * len(table) + 3), 4.0)
    ax = fig.add_subplot()
    x = np.arange(len(table))
    bottom = np.zeros(len(table))
    for i, part in enumerate(parts):
        heights = np.array([b.get(part, 0.0) for b in table.values()]) * scale
        ax.bar(x, heights, bottom=bottom, label=part, width=0.6,
               color=COLOURS.get(part, _CYCLE[i % len(_CYCLE)]))
        bottom += heights
    ax.set_xticks(x, list(table))
    ax.set_ylabel(f"time per step ({unit})")
    ax.set_title("step time breakdown")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    return fig


def plot_timeline(result: Result, label_limit: int = 200) -> Figure:
    """Gantt chart of one step: a row per pipeline stage (stage 0 on top) with its F and B spans,
    gradient sync and optimizer below each row's compute bar. Micro-batch numbers are written in
    the bars when there are at most `label_limit` spans."""
    stages = sorted({s.stage for s in result.spans} | {st for st, _, _ in result.optimizer_spans})
    scale, unit = time_unit(result.step_time_s)
    fig = _figure(10.0, max(2.5, 0.45 * len(stages) + 1.5))
    ax = fig.add_subplot()
    for row, stage in enumerate(stages):
        y = len(stages) - 1 - row
        for kind in ("F", "B"):
            mine = [s for s in result.spans if s.stage == stage and s.kind == kind]
            ax.broken_barh([(s.start * scale, (s.end - s.start) * scale) for s in mine],
                           (y - 0.1, 0.5), facecolors=COLOURS[kind], edgecolor="white",
                           linewidth=0.3, label=kind if row == 0 else None, gid=f"{kind}{stage}")
            if len(result.spans) <= label_limit:
                for s in mine:
                    ax.text((s.start + s.end) / 2 * scale, y + 0.15, str(s.micro),
                            ha="center", va="center", fontsize=6, color="white")
        for name, rows in (("sync", result.sync_spans), ("optimizer", result.optimizer_spans)):
            bars = [((a * scale), (b - a) * scale) for st, a, b in rows if st == stage and b > a]
            ax.broken_barh(bars, (y - 0.35, 0.2), facecolors=COLOURS[name],
                           label=name if row == 0 else None, gid=f"{name}{stage}")
    ax.set_yticks(range(len(stages)), [f"stage {s}" for s in reversed(stages)])
    ax.set_xlabel(f"time ({unit})")
    ax.set_xlim(0, result.step_time_s * scale)
    ax.set_title("pipeline timeline (F forward, B backward; numbers are micro-batches)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    return fig


def plot_scaling(points: Mapping[str, Sequence[tuple[float, float]]]
                 | Sequence[tuple[float, float]], ylabel: str = "samples/s",
                 logy: bool = False) -> Figure:
    """Throughput against device count on a log-2 x axis (log y too if `logy`), with the ideal
    line of each series: its smallest run's throughput times devices / that run's devices.
    `points` is one series of (devices, throughput) or a mapping name -> series."""
    from matplotlib.ticker import ScalarFormatter

    series = points if isinstance(points, Mapping) else {"measured": points}
    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot()
    for i, (name, pts) in enumerate(series.items()):
        pts = sorted(pts)
        if not pts:
            continue
        colour = _CYCLE[i % len(_CYCLE)]
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        ax.plot(xs, ys, marker="o", color=colour, label=name, gid=f"series:{name}")
        d0, t0 = pts[0]
        ax.plot(xs, [t0 * x / d0 for x in xs], linestyle="--", color=colour, alpha=0.6,
                label=f"{name} ideal", gid=f"ideal:{name}")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ScalarFormatter())   # 8, 16, 32 rather than 2^3, 2^4, 2^5
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("devices")
    ax.set_ylabel(ylabel)
    ax.set_title("scaling")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_heatmap(matrix: Any, row_labels: Sequence[str], col_labels: Sequence[str],
                 title: str, vmin: float | None = None, vmax: float | None = None,
                 annotate_limit: int = 400) -> Figure:
    """A heatmap of a 2-D array (rows x columns), e.g. per-tile or per-link utilisation, with a
    colour bar; cell values are written in when there are at most `annotate_limit` cells."""
    import numpy as np

    data = np.asarray(matrix, dtype=float)
    if data.ndim != 2 or data.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"heatmap of shape {data.shape}: expected ({len(row_labels)}, "
                         f"{len(col_labels)}) to match the labels")
    rows, cols = data.shape
    fig = _figure(min(14.0, 2.5 + 0.5 * cols), min(12.0, 1.8 + 0.4 * rows))
    ax = fig.add_subplot()
    im = ax.imshow(data, cmap="viridis", aspect="auto", vmin=vmin, vmax=vmax,
                   interpolation="nearest")
    ax.set_xticks(range(cols), list(col_labels), rotation=45, ha="right")
    ax.set_yticks(range(rows), list(row_labels))
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    if data.size <= annotate_limit:
        lo, hi = im.get_clim()
        for r in range(rows):
            for c in range(cols):
                dark = (data[r, c] - lo) < 0.5 * (hi - lo)
                ax.text(c, r, f"{data[r, c]:.3g}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
    return fig


def plot_curves(series_by_name: Mapping[str, Sequence[float]
                                        | tuple[Sequence[float], Sequence[float]]],
                xlabel: str, ylabel: str, logy: bool = False) -> Figure:
    """Line plot of named series (loss, IoU...): each is `ys` (x = 0, 1, ...) or `(xs, ys)`."""
    fig = _figure(7.0, 4.0)
    ax = fig.add_subplot()
    for i, (name, values) in enumerate(series_by_name.items()):
        if isinstance(values, tuple) and len(values) == 2 and not isinstance(values[0], int
                                                                             | float):
            xs, ys = list(values[0]), list(values[1])
        else:
            ys = [float(v) for v in values]
            xs = list(range(len(ys)))
        if len(xs) != len(ys):
            raise ValueError(f"series '{name}' has {len(xs)} x values and {len(ys)} y values")
        ax.plot(xs, ys, label=name, color=_CYCLE[i % len(_CYCLE)], gid=f"series:{name}")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if series_by_name:
        ax.legend(fontsize="small")
    return fig
