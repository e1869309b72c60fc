"""`dojo sweep MODEL --system S --devices 8,16,32 --plan tp=8,pp=2`: strong or weak scaling."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dojo.cli.common import integer, parse_sets, print_json, with_native_precision


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="strong or weak scaling over device counts, with a plot",
                       description="Simulate MODEL at several sizes of a GPU cluster (--devices) "
                       "or on several systems (--systems). The plan's tp, pp and other settings "
                       "stay; dp grows with the devices. Strong scaling keeps the global batch; "
                       "--weak keeps the batch per data-parallel replica.")
    p.add_argument("model")
    p.add_argument("--system", default=None, help="GPU cluster to resize")
    p.add_argument("--devices", default=None, help="comma-separated device counts (>= 1)")
    p.add_argument("--systems", default=None, help="comma-separated systems (e.g. tile,v1,exapod)")
    p.add_argument("--plan", default="tp=1,pp=1", help="plan without dp (dp fills the devices)")
    p.add_argument("--batch", type=integer, required=True,
                   help="global batch (strong) or batch at the first point (weak)")
    p.add_argument("--weak", action="store_true", help="weak scaling")
    p.add_argument("--seq", type=integer, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--plot", metavar="FILE", help="write the scaling plot (.png, .svg or .pdf)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from dojo.compiler.mapping import device_count
    from dojo.errors import ConfigError
    from dojo.hardware import load_system
    from dojo.models import check_model
    from dojo.plan import parse_plan
    from dojo.plan.plan import check_fit
    from dojo.sim.session import MAX_BATCH, check_inputs, simulate_model

    if args.plot is not None:
        from dojo.report.html import FIGURE_FORMATS, check_output

        check_output(args.plot, "--plot", tuple(FIGURE_FORMATS))
    if args.batch < 1:
        raise ConfigError("--batch", "batch", args.batch, "an integer >= 1")
    base = parse_plan(args.plan)
    if any(part.partition("=")[0].strip() == "dp" for part in args.plan.split(",")):
        raise ConfigError("--plan", "dp", base.dp, "no dp: dp fills the devices of each point")
    specs = _systems(args, load_system)
    overrides = parse_sets(args.set)
    check_inputs(args.batch, args.seq)  # before any progress line, as the model
    check_model(args.model, overrides, args.seq)
    first = device_count(specs[0])
    runs = []
    for spec in specs:  # every point checked before the first is simulated
        n = device_count(spec)
        if n % (base.tp * base.pp):
            raise ConfigError("--devices", "devices", n, f"a multiple of tp x pp = "
                              f"{base.tp * base.pp}")
        batch = args.batch * n // first if args.weak else args.batch
        if not 1 <= batch <= MAX_BATCH:
            raise ConfigError("--batch", "batch", args.batch, f"a batch that stays from 1 to "
                              f"2^53 when weak scaling goes from {first} to {n} devices "
                              f"({args.batch} x {n} / {first} = {batch})")
        plan = replace(base, dp=n // (base.tp * base.pp))
        native = with_native_precision(args.plan, spec)[0]
        if native != args.plan:  # the system's own precision: fp32 on `cpu`
            plan = replace(plan, precision=parse_plan(native).precision)
        check_fit(plan, n, batch)  # the batch split too, before any progress line
        runs.append((spec, n, plan, batch))
    points = []
    for spec, n, plan, batch in runs:
        print(f"{spec.name}: {n} devices, {plan.text()}, batch {batch}", file=sys.stderr)
        sim = simulate_model(args.model, overrides, spec, plan, batch, args.seq)
        r = sim.result
        points.append({"system": spec.name, "devices": n, "batch": batch, "plan": plan.text(),
                       "step_time_s": r.step_time_s, "samples_per_s": r.samples_per_s,
                       "mfu": r.mfu, "fits": r.memory.fits})
    base_rate = points[0]["samples_per_s"] / points[0]["devices"]
    for p in points:
        p["efficiency"] = p["samples_per_s"] / (base_rate * p["devices"])
    if args.plot:
        _plot(points, args.plot, args.weak)
    if args.json:
        print_json({"mode": "weak" if args.weak else "strong", "points": points})
        return 0
    print(f"{'system':<16} {'devices':>8} {'batch':>7} {'step s':>10} {'samples/s':>11} "
          f"{'efficiency':>10} {'MFU':>6}")
    for p in points:
        print(f"{p['system']:<16} {p['devices']:>8} {p['batch']:>7} {p['step_time_s']:>10.4g} "
              f"{p['samples_per_s']:>11.4g} {p['efficiency'] * 100:>9.1f}% "
              f"{p['mfu'] * 100:>5.1f}%")
    return 0


def _systems(args: argparse.Namespace, load: object) -> list[Any]:
    from dojo.cli.common import int_list, system_list
    from dojo.errors import ConfigError, DojoError
    from dojo.hardware import load_system

    if args.systems is not None:
        if args.system is not None or args.devices is not None:
            raise DojoError("dojo sweep: give --systems A,B,... or --system S --devices N,M,..."
                            ", not both")
        return [load_system(s) for s in system_list(args.systems, "--systems")]
    if not args.system or not args.devices:
        raise ConfigError("--devices", "devices", args.devices,
                          "--system with --devices N,M,... or --systems A,B,...")
    return [load_system(args.system, devices=n) for n in int_list(args.devices, "--devices")]


def _plot(points: list[dict[str, Any]], path: str, weak: bool) -> None:
    from dojo.report import plot_scaling
    from dojo.report.html import write_figure

    fig = plot_scaling({"simulated": [(p["devices"], p["samples_per_s"]) for p in points]},
                       logy=True)
    fig.axes[0].set_title(("weak" if weak else "strong") + " scaling")
    write_figure(fig, path, "--plot")
