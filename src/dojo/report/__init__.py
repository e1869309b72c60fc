"""Reports: Perfetto/Chrome traces of simulated steps, self-contained HTML with plots, JSON.

Importing this package is cheap: matplotlib is imported inside the functions that draw, so the
CLI can import `dojo.report` without paying for plotting until a report is asked for.
"""

from dojo.report.files import write_bytes_atomic, write_text_atomic
from dojo.report.html import HtmlReport
from dojo.report.plots import (
    plot_breakdown,
    plot_curves,
    plot_heatmap,
    plot_scaling,
    plot_timeline,
)
from dojo.report.simreport import simulation_report
from dojo.report.trace import MAX_EVENTS, TraceInfo, trace_events, write_trace

__all__ = [
    "MAX_EVENTS",
    "HtmlReport",
    "TraceInfo",
    "plot_breakdown",
    "plot_curves",
    "plot_heatmap",
    "plot_scaling",
    "plot_timeline",
    "simulation_report",
    "trace_events",
    "write_bytes_atomic",
    "write_text_atomic",
    "write_trace",
]
