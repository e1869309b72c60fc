"""`dojo calibrate --system S --runs measured.csv --out mine.toml`: fit a system to your runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dojo.cli.common import integer, print_json, system_inputs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="fit a system's efficiencies to step times you measured",
                       description="Simulate each measured run (CSV: model, plan, batch, seconds;"
                       " optional seq, stack, overrides, devices) on SYSTEM, fit its GEMM "
                       "efficiency, communication efficiency, per-step overhead and each "
                       "software stack's GEMM efficiency by least squares on the log error, "
                       "print every run's residual and write the fitted system file.")
    p.add_argument("--system", required=True, help="system name or .toml path (each run's "
                   "device count comes from its plan or its devices column)")
    p.add_argument("--runs", required=True, metavar="CSV", help="measured runs, one per row")
    p.add_argument("--out", required=True, metavar="FILE", help="system .toml file to write")
    p.add_argument("--iterations", type=integer, default=None,
                   help="most fit iterations (default and maximum: 20)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dojo.errors import ConfigError
    from dojo.report.html import check_output, check_outputs_apart
    from dojo.sim.calibrate import MAX_ITERATIONS, fit, prepare
    from dojo.sim.runs import fitted_system_text, read_runs

    out = check_output(args.out, "--out", ("toml",))
    # the fitted file must not replace the system it was fitted from, nor the measured runs
    check_outputs_apart((("--out", args.out),),
                        (*system_inputs("--system", args.system), ("--runs", args.runs)))
    iterations = MAX_ITERATIONS if args.iterations is None else args.iterations
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise ConfigError("--iterations", "iterations", iterations,
                          f"a whole number from 1 to {MAX_ITERATIONS}")
    runs = read_runs(args.runs)
    prepared = prepare(runs, args.system)
    result = fit(prepared, iterations)
    note = f"{len(runs)} runs in {Path(args.runs).name}"
    text = fitted_system_text(args.system, out.stem, result.values, result.stacks, note)
    _check_loads(text, out)
    residuals = result.residuals(runs)
    if args.json:
        print_json({"fitted": dict(result.values),
                    "stacks": {k: dict(v) for k, v in result.stacks.items()},
                    "base_stack": result.base_stack, "held": list(result.held),
                    "iterations": result.iterations,
                    "runs": [{"run": r.label, "stack": r.stack, "measured_s": r.seconds,
                              "start_s": s, "predicted_s": p, "residual": e}
                             for r, s, p, e in zip(runs, result.start_s, result.predicted_s,
                                                   residuals)],
                    "out": str(out)})
    else:
        _print(runs, result, residuals)
    from dojo.report.files import write_text_atomic

    write_text_atomic(out, text)  # an existing file is replaced whole or kept, never half-written
    print(f"wrote {out} (use it with --system {out})", file=sys.stderr)
    return 0


def _check_loads(text: str, out: Path) -> None:
    """The written file must load as a system: parse it from a temporary copy first."""
    import tempfile

    from dojo.hardware.loader import load_system
    from dojo.sim.simulate import leaf_calibration

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / out.name
        path.write_text(text, encoding="utf-8")
        leaf_calibration(load_system(str(path)))


def _print(runs: list, result: object, residuals: list[float]) -> None:
    from dojo.sim.calibrate import Fit

    assert isinstance(result, Fit)
    print(f"{'run':<36} {'stack':<14} {'measured s':>11} {'before s':>10} {'fitted s':>10} "
          f"{'residual':>9}")
    for r, s, p, e in zip(runs, result.start_s, result.predicted_s, residuals):
        print(f"{r.label[-36:]:<36} {r.stack or '-':<14} {r.seconds:>11.4g} {s:>10.4g} "
              f"{p:>10.4g} {e * 100:>+8.1f}%")
    mean = sum(abs(e) for e in residuals) / len(residuals)
    print(f"\nresidual |error|: mean {mean * 100:.1f} %, max "
          f"{max(abs(e) for e in residuals) * 100:.1f} % over {len(runs)} runs "
          f"({result.iterations} iterations)")
    v = result.values
    print(f"fitted: matrix_efficiency {v['matrix_efficiency']:.3f}, link_efficiency "
          f"{v['link_efficiency']:.3f}, step_overhead_s {v['step_overhead_s']:.3g}"
          + (f" (base stack {result.base_stack})" if result.base_stack else ""))
    for stack, fields in result.stacks.items():
        if fields:
            print(f"  stack {stack}: matrix_efficiency {fields['matrix_efficiency']:.3f}")
    fitted = 3 - len(result.held) + sum(1 for f in result.stacks.values() if f)
    if len(runs) < fitted:
        print(f"  note: {len(runs)} runs for {fitted} fitted parameters: the runs do not "
              "determine them all (measure more plans, sizes or stacks)")
    for name in result.held:
        print(f"  {name}: not determined by these runs (no run's step depends on it): kept")
