"""The one-call HTML report of a simulated step: headline, breakdown, memory, timeline, plan,
system."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dojo.hardware.derived import summarize
from dojo.report.html import HtmlReport
from dojo.report.plots import plot_breakdown, plot_timeline
from dojo.units import si

if TYPE_CHECKING:
    from dojo.sim.session import Simulated


def simulation_report(simulated: Simulated, title: str | None = None) -> HtmlReport:
    """A report of one simulated step; the caller writes it (`.write(path)`) or adds to it."""
    program, result = simulated.program, simulated.result
    name = title or (f"{simulated.graph.name} on {program.system.name}, "
                     f"plan {program.plan.text()}")
    report = HtmlReport(name)
    _headline(report, simulated)
    _breakdown(report, simulated)
    _memory(report, simulated)
    report.heading("Timeline")
    report.figure(plot_timeline(result),
                  f"One step, one device per pipeline stage (critical stage "
                  f"{result.critical_stage}); bars below each row are gradient sync and "
                  "optimizer.")
    _plan(report, simulated)
    _system(report, simulated)
    report.heading("Result (JSON)")
    report.json_block(result.to_json())
    return report


def _headline(report: HtmlReport, simulated: Simulated) -> None:
    program, r = simulated.program, simulated.result
    rows: list[tuple[str, str]] = [
        ("step time", si(r.step_time_s, "s")),
        ("throughput", si(r.samples_per_s, "samples/s")),
    ]
    if r.tokens_per_s is not None:
        rows.append(("tokens", si(r.tokens_per_s, "tokens/s")))
    rows += [
        ("MFU", f"{100 * r.mfu:.1f} %"),
        ("achieved per device", si(r.achieved_flops_per_device, "FLOP/s")),
        ("model FLOP per step", si(r.model_flops, "FLOP")),
        ("fits in memory", "yes" if r.memory.fits else f"no ({r.memory.reason})"),
        ("energy per step", si(r.energy_j, "J")),
        ("devices", f"{program.devices:,} {program.device}s"
                    + (f" ({program.idle_devices:,} idle)" if program.idle_devices else "")),
        ("global batch", f"{program.batch:,} samples in {program.microbatches} micro-batches"),
    ]
    report.heading("Headline")
    report.table(rows, ["quantity", "value"])


def _breakdown(report: HtmlReport, simulated: Simulated) -> None:
    r = simulated.result
    step = r.step_time_s
    rows = [(part, si(sec, "s"), f"{100 * sec / step:.1f} %" if step else "-")
            for part, sec in r.breakdown_s.items()]
    report.heading("Where the step time goes")
    report.paragraph(f"Critical pipeline stage {r.critical_stage}: its compute, exposed "
                     "communication, recompute, optimizer and the bubble (idle time) add up to "
                     "the step time.")
    report.table(rows, ["component", "time", "share of step"])
    report.figure(plot_breakdown({simulated.graph.name: r}), "Step time breakdown")


def device_memory_label(simulated: Simulated) -> str:
    """Name of the memory a device addresses directly, from its pools: "SRAM (on chip)" on a
    D1, "HBM" on a GPU (whose HBM sits beside the die, not on it)."""
    spec = simulated.program.system
    pools = " + ".join(name.upper() for name in spec.leaf.memory)
    return f"{pools} (on chip)" if spec.family == "dojo" else pools


def _memory(report: HtmlReport, simulated: Simulated) -> None:
    m = simulated.result.memory
    rows = [(k, si(v, "B")) for k, v in (("parameters", m.params), ("gradients", m.grads),
                                          ("optimizer state", m.optimizer_state),
                                          ("activations in flight", m.activations),
                                          ("total", m.total), ("capacity", m.capacity),
                                          (device_memory_label(simulated), m.onchip))]
    if m.offchip_bytes_per_s:
        rows.append(("DIP HBM bandwidth (off chip)", si(m.offchip_bytes_per_s, "B/s")))
    report.heading("Memory per device")
    report.paragraph(f"Most loaded device: pipeline stage {m.stage}. "
                     + ("It fits." if m.fits else f"It does not fit: {m.reason}.")
                     + (" Part of its state lives off chip and streams in." if m.spills else ""))
    report.table(rows, ["", "bytes"])


def _plan(report: HtmlReport, simulated: Simulated) -> None:
    p = simulated.program.plan
    report.heading("Plan")
    report.paragraph(p.text())
    report.table([(k, str(getattr(p, k))) for k in ("dp", "tp", "pp", "mb", "interleave",
                                                     "schedule", "recompute", "sp", "zero",
                                                     "precision", "overlap")],
                 ["setting", "value"])


def _system(report: HtmlReport, simulated: Simulated) -> None:
    s = summarize(simulated.program.system)
    report.heading("System")
    report.paragraph(f"{s.title} ({s.name})")
    rows: list[tuple[str, str]] = [(k, f"{v:,}") for k, v in s.counts.items() if v]
    rows += [(f"peak {dtype}", si(v, "FLOP/s")) for dtype, v in s.peak_flops.items()]
    rows += [("SRAM", si(s.sram_bytes, "B")), ("HBM", si(s.hbm_bytes, "B")),
             ("bisection", si(s.bisection_bytes_per_s, "B/s")),
             ("power", si(s.power_watts, "W"))]
    report.table(rows, ["", "value"])
    report.table([(row.level, row.name, row.role, si(row.bytes_per_s, "B/s"),
                   si(row.latency_s, "s"), row.count) for row in s.links],
                 ["level", "link", "role", "bandwidth", "latency", "count"])
