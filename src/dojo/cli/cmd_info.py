"""`dojo info SYSTEM [--devices N] [--json]`: what a system is made of, from its data file."""

from __future__ import annotations

import argparse

from dojo.cli.common import integer, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a system: counts, peaks, memory, links, power",
                       description="Describe a shipped system (d1, tile, tray, v1, cabinet, "
                       "exapod, a100-cluster, h100-cluster) or a TOML file of your own.")
    p.add_argument("system", help="system name, NAME:GPUS, or path to a .toml file")
    p.add_argument("--devices", type=integer, default=None, help="GPU count for a GPU cluster")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dojo.hardware import load_system, summarize

    summary = summarize(load_system(args.system, devices=args.devices))
    if args.json:
        print_json(summary.to_json())
    else:
        print(render(summary))
    return 0


def render(s: object) -> str:
    """A plain-text table of a `dojo.hardware.Summary`."""
    from dojo.hardware.derived import Summary
    from dojo.units import si

    assert isinstance(s, Summary)  # internal contract, not user input
    lines = [f"{s.title} ({s.name})", ""]
    counts = "  ".join(f"{k} {v:,}" for k, v in s.counts.items() if v)
    lines += [f"  counts       {counts}"]
    for dtype, flops in s.peak_flops.items():
        lines.append(f"  peak {dtype:<7} {si(flops, 'FLOP/s')}")
    lines += [
        f"  SRAM         {si(s.sram_bytes, 'B')}   load {si(s.sram_read_bytes_per_s, 'B/s')}",
        f"  HBM          {si(s.hbm_bytes, 'B')}   {si(s.hbm_bytes_per_s, 'B/s')}",
        f"  bisection    {si(s.bisection_bytes_per_s, 'B/s')} per direction",
        f"  power        {si(s.power_watts, 'W')}",
        "",
        f"  {'level':<8} {'link':<10} {'role':<18} {'bandwidth':>12} {'latency':>10} {'count':>10}",
    ]
    for row in s.links:
        lines.append(f"  {row.level:<8} {row.name:<10} {row.role:<18} "
                     f"{si(row.bytes_per_s, 'B/s'):>12} {si(row.latency_s, 's'):>10} "
                     f"{row.count:>10,}")
    return "\n".join(lines)
