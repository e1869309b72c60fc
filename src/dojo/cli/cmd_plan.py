"""`dojo plan MODEL --system S`: the fastest plans that fit, and why the others were rejected."""

from __future__ import annotations

import argparse
import sys

from dojo.cli.common import integer, parse_sets, print_json, top_flag


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="search the best parallel plan for a model on a system",
                       description="Search data, tensor and pipeline splits, micro-batch size, "
                       "interleaving and recompute under the memory limits (branch and bound "
                       "over the simulator).")
    p.add_argument("model", help="zoo model name, or path/to/file.py:factory")
    p.add_argument("--system", required=True, help="system name, NAME:GPUS, or a .toml path")
    p.add_argument("--devices", type=integer, default=None, help="GPU count for a GPU cluster")
    p.add_argument("--batch", type=integer, default=None, help="global batch (default: 1/device)")
    p.add_argument("--seq", type=integer, default=None, help="sequence length")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--top", type=integer, default=5, help="candidates to list (1 to 100, "
                   "default 5)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dojo.cli.cmd_simulate import default_batch
    from dojo.hardware import load_system
    from dojo.models import check_model
    from dojo.sim.search import best_plan
    from dojo.sim.session import check_inputs

    top_flag(args.top, "every listed plan is simulated: a larger --top simulates every plan, "
             "minutes to hours")
    spec = load_system(args.system, devices=args.devices)
    batch = args.batch if args.batch is not None else default_batch(spec)
    overrides = parse_sets(args.set)
    # Before the progress line, so that a refusal is one line.
    check_inputs(batch, args.seq)
    check_model(args.model, overrides, args.seq)
    print(f"searching plans for {args.model} on {spec.name} (batch {batch})...", file=sys.stderr)
    found = best_plan(args.model, overrides, spec, batch, args.seq, top=args.top)
    summary = (f"{found.considered} plans considered, {found.evaluated} simulated, "
               f"{found.search_s:.2f} s")
    if args.json:
        # The wall time goes to stderr: stdout is the same bytes for the same inputs.
        print(summary, file=sys.stderr)
        print_json(found.to_json())
        return 0
    print(f"best: {found.best.plan.text()}  {found.best.step_time_s:.4g} s/step  "
          f"MFU {found.best.mfu * 100:.1f} %")
    print(f"\n{'plan':<60} {'step s':>10} {'MFU':>7}")
    for c in found.candidates:
        print(f"{c.plan.text():<60} {c.step_time_s:>10.4g} {c.mfu * 100:>6.1f}%")
    if found.rejected:
        print("\nrejected:")
        for family, reason in found.rejected[:10]:
            print(f"  {family}: {reason}")
        if len(found.rejected) > 10:
            print(f"  ... and {len(found.rejected) - 10} more families")
    print(f"\n{summary}")
    return 0
