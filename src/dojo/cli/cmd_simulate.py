"""`dojo simulate MODEL --system S --plan P --batch B`: one training step, timed and explained."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dojo.cli.common import (
    integer,
    named_keys,
    parse_sets,
    print_json,
    system_inputs,
    with_native_precision,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulate one training step of a model on a system",
                       description="Capture MODEL's training step, compile it for PLAN on SYSTEM "
                       "and simulate it: step time, breakdown, memory per device, energy.")
    add_common(p)
    p.add_argument("--stack", default="", help="software stack whose calibration the system "
                   "file carries ([gpu.stacks.NAME], written by dojo calibrate)")
    p.add_argument("--trace", metavar="FILE", help="write a Chrome/Perfetto trace JSON")
    p.add_argument("--report", metavar="FILE", help="write an HTML report")
    p.set_defaults(run=run)


def add_common(p: argparse.ArgumentParser) -> None:
    """Options every model x plan x system command takes."""
    p.add_argument("model", help="zoo model name, or path/to/file.py:factory")
    p.add_argument("--system", required=True, help="system name, NAME:GPUS, or a .toml path")
    p.add_argument("--devices", type=integer, default=None, help="GPU count for a GPU cluster")
    p.add_argument("--plan", default="auto",
                   help="e.g. dp=8,tp=8,pp=16,mb=1,interleave=3,recompute=selective,sp=on,zero=1"
                   " (default: auto, the best plan found)")
    p.add_argument("--batch", type=integer, default=None, help="global batch in samples")
    p.add_argument("--seq", type=integer, default=None, help="sequence length (sequence models)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model setting, repeatable")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def simulated_from_args(args: argparse.Namespace) -> Any:
    """Resolve the plan (searching when it is `auto`) and simulate; returns `Simulated`."""
    from dojo.hardware import load_system
    from dojo.plan import parse_plan
    from dojo.sim.session import simulate_model

    spec = load_system(args.system, devices=args.devices)
    if getattr(args, "stack", ""):
        from dojo.hardware.stacks import with_stack

        spec = with_stack(spec, args.stack)
    overrides = parse_sets(args.set)
    batch = args.batch if args.batch is not None else default_batch(spec)
    if args.plan == "auto":
        from dojo.sim.search import best_plan

        found = best_plan(args.model, overrides, spec, batch, args.seq)
        return found.best.simulated
    text, _ = with_native_precision(args.plan, spec)
    return simulate_model(args.model, overrides, spec, parse_plan(text), batch, args.seq)


def default_batch(spec: Any) -> int:
    """One sample per device (a data-parallel-friendly default) when --batch is not given."""
    from dojo.compiler.mapping import device_count

    return device_count(spec)


def run(args: argparse.Namespace) -> int:
    from dojo.report.html import check_output, check_outputs_apart

    # Output paths are checked before the simulation, so a bad one costs nothing.
    outputs = (("--trace", args.trace), ("--report", args.report))
    for flag, path in outputs:
        if path is not None:
            check_output(path, flag)
    if args.trace or args.report:
        check_outputs_apart(outputs, (*system_inputs("--system", args.system),
                                      ("model", args.model)))
    sim = simulated_from_args(args)
    if args.trace:
        from dojo.report.trace import write_trace

        write_trace(sim, args.trace)
    if args.report:
        from dojo.report import simulation_report

        simulation_report(sim).write(args.report, flag="--report")
    notes = plan_notes(args.plan, sim)
    if args.json:
        print_json({**sim.result.to_json(), "plan": sim.program.plan.text(full=True),
                    "notes": notes, "devices": sim.program.devices,
                    "idle_devices": sim.program.idle_devices})
    else:
        print(render(sim))
        for note in notes:
            print(f"  note           {note}")
    if args.trace:
        print(f"trace written to {args.trace} (open it in https://ui.perfetto.dev)",
              file=sys.stderr)
    return 0


def plan_notes(text: str, sim: Any) -> list[str]:
    """What the simulator chose that the user did not write: the system's own precision where
    the plan names none and the device has no bf16 rate; a defaulted micro-batch size that
    splits each replica's batch into many one-sample micro-batches (small kernels, and one
    pipeline task per sample)."""
    p = sim.program
    notes = [] if text == "auto" else [n for n in [with_native_precision(text, p.system)[1]] if n]
    if text == "auto" or "mb" in named_keys(text) or p.microbatches <= 1:
        return notes
    return notes + [f"--plan gives no mb, so mb=1: each replica runs {p.microbatches} "
                    f"micro-batches of 1 sample; any mb that divides {p.microbatches} runs "
                    "larger kernels (dojo plan searches them)"]


def render(sim: Any) -> str:
    """A readable summary of a `Simulated`."""
    r, p = sim.result, sim.program
    gb = 1e9
    mem = r.memory
    idle = f" ({p.idle_devices} of {p.devices + p.idle_devices} idle)" if p.idle_devices else ""
    lines = [
        f"{p.system.title}: {p.devices} {p.device}s{idle}, plan {p.plan.text(full=True)}, "
        f"batch {p.batch}, "
        f"{p.microbatches} micro-batches",
        f"  step time      {r.step_time_s:.4g} s    {r.samples_per_s:.4g} samples/s"
        + (f"    {r.tokens_per_s:.4g} tokens/s" if r.tokens_per_s else ""),
        f"  model FLOPs    {r.model_flops:.4g} per step    MFU {r.mfu * 100:.1f} %",
        "  breakdown      " + "  ".join(f"{k} {v:.3g} s" for k, v in r.breakdown_s.items()),
        f"  memory/device  params {mem.params / gb:.3g} GB  grads {mem.grads / gb:.3g} GB  "
        f"optimizer {mem.optimizer_state / gb:.3g} GB  activations {mem.activations / gb:.3g} GB"
        f"  = {mem.total / gb:.3g} of {mem.capacity / gb:.3g} GB",
        f"  fits           {'yes' if mem.fits else 'NO: ' + mem.reason}",
        f"  energy         {r.energy_j / 1e3:.4g} kJ per step",
    ]
    return "\n".join(lines)
