"""`dojo compare MODEL --systems v1,h100-cluster:48`: each system with its best plan."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dojo.cli.common import integer, parse_sets, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="the same model on several systems, each at its best plan")
    p.add_argument("model", help="zoo model name, or path/to/file.py:factory")
    p.add_argument("--systems", required=True,
                   help="comma-separated systems, e.g. v1,h100-cluster:48")
    p.add_argument("--batch", type=integer, default=None, help="global batch (default: 1/device "
                   "of the largest system)")
    p.add_argument("--seq", type=integer, default=None, help="sequence length")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--chart", metavar="FILE", help="write a bar chart of step time and energy "
                   "(.png, .svg or .pdf)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dojo.cli.cmd_simulate import default_batch
    from dojo.cli.common import system_list
    from dojo.errors import ConfigError
    from dojo.hardware import load_system
    from dojo.models import check_model
    from dojo.sim.search import best_plan
    from dojo.sim.session import check_inputs

    if args.chart is not None:
        from dojo.report.html import FIGURE_FORMATS, check_output

        check_output(args.chart, "--chart", tuple(FIGURE_FORMATS))
    if args.batch is not None and args.batch < 1:
        raise ConfigError("--batch", "batch", args.batch, "an integer >= 1")
    specs = [load_system(name) for name in system_list(args.systems, "--systems")]
    batch = args.batch if args.batch is not None else max(default_batch(s) for s in specs)
    overrides = parse_sets(args.set)
    check_inputs(batch, args.seq)  # before any progress line, as the model
    check_model(args.model, overrides, args.seq)
    rows: list[dict[str, Any]] = []
    for spec in specs:
        print(f"planning {spec.name}...", file=sys.stderr)
        found = best_plan(args.model, overrides, spec, batch, args.seq)
        r = found.best.simulated.result
        rows.append({"system": spec.name, "plan": found.best.plan.text(),
                     "step_time_s": r.step_time_s, "samples_per_s": r.samples_per_s,
                     "tokens_per_s": r.tokens_per_s, "energy_j": r.energy_j, "mfu": r.mfu,
                     "devices": found.best.simulated.program.devices})
    if args.chart:
        _chart(rows, args.chart)
    if args.json:
        print_json({"batch": batch, "systems": rows})
        return 0
    print(f"{args.model}, global batch {batch}")
    print(f"{'system':<16} {'devices':>8} {'step s':>10} {'samples/s':>11} {'kJ/step':>9} "
          f"{'MFU':>6}  plan")
    for row in rows:
        print(f"{row['system']:<16} {row['devices']:>8} {row['step_time_s']:>10.4g} "
              f"{row['samples_per_s']:>11.4g} {row['energy_j'] / 1e3:>9.4g} "
              f"{row['mfu'] * 100:>5.1f}%  {row['plan']}")
    return 0


def _chart(rows: list[dict[str, Any]], path: str) -> None:
    from matplotlib.figure import Figure

    from dojo.report.html import write_figure

    names = [str(r["system"]) for r in rows]
    fig = Figure(figsize=(9, 3.5))
    left, right = fig.subplots(1, 2)
    left.bar(names, [float(r["step_time_s"]) for r in rows], color="#3b6ea8")
    left.set_ylabel("step time (s)")
    right.bar(names, [float(r["energy_j"]) / 1e3 for r in rows], color="#c0504d")
    right.set_ylabel("energy per step (kJ)")
    fig.tight_layout()
    write_figure(fig, path, "--chart")
