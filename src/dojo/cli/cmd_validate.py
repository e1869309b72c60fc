"""`dojo validate`: predicted versus measured step times of published training runs."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from dojo.cli.common import print_json

if TYPE_CHECKING:
    from dojo.sim.validate import Outcome


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="compare the simulator with published measured runs",
                       description="Simulate every case of the validation set (published, "
                       "measured training runs) and print predicted vs measured step time. "
                       "Exits 1 when the gated cases' error passes the stated tolerance.")
    p.add_argument("--only", default=None,
                   help="comma-separated substrings of case ids (each must match a case)")
    p.add_argument("--leave-one-out", action="store_true",
                   help="predict each case from a calibration fitted to the other cases on its "
                   "hardware (dojo calibrate's fit): the out-of-sample error")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dojo.sim.validate import (
        MAX_TOLERANCE,
        MEAN_TOLERANCE,
        load_cases,
        not_fitting,
        predict_case,
        select,
        summary,
        validate,
    )

    cases = select(load_cases(), args.only)

    def progress(i: int, n: int, name: str) -> None:
        print(f"\r[{i + 1}/{n}] {name:<45}", end="", file=sys.stderr, flush=True)

    if args.leave_one_out:
        from dojo.sim.validate import leave_one_out

        outcomes = leave_one_out(cases, progress)
    else:
        outcomes = validate(cases, predict_case, progress)
    print("\r" + " " * 60 + "\r", end="", file=sys.stderr)
    stats = summary(outcomes)
    ok = stats["mean_abs_error"] <= MEAN_TOLERANCE and stats["max_abs_error"] <= MAX_TOLERANCE
    over = [o.case.id for o in not_fitting(outcomes)]
    if args.json:
        print_json({"cases": [{"id": o.case.id, "confidence": o.case.confidence,
                               "measured_s": o.case.measured_step_s,
                               "predicted_s": o.predicted_s, "error": o.error,
                               "memory_bytes": o.memory_bytes or None,
                               "capacity_bytes": o.capacity_bytes or None,
                               "fits_memory": o.fits_memory}
                              for o in outcomes], "summary": stats, "within_tolerance": ok,
                    "not_fitting_memory": over})
        return 0 if ok else 1
    print(f"{'case':<40} {'conf':<6} {'measured s':>11} {'predicted s':>12} {'error':>8} "
          f"{'memory GB':>14}")
    for o in outcomes:
        print(f"{o.case.id:<40} {o.case.confidence:<6} {o.case.measured_step_s:>11.3f} "
              f"{o.predicted_s:>12.3f} {o.error * 100:>+7.1f}% {_memory(o):>14}")
    if stats["gated_cases"]:
        print(f"\ngated ({int(stats['gated_cases'])} high-confidence cases): mean |error| "
              f"{stats['mean_abs_error'] * 100:.1f} % (tolerance {MEAN_TOLERANCE * 100:.0f} %), "
              f"max {stats['max_abs_error'] * 100:.1f} % (tolerance {MAX_TOLERANCE * 100:.0f} %)")
    else:
        print("\nno high-confidence case selected: nothing gated")
    print(f"all {len(outcomes)} cases: mean {stats['all_mean_abs_error'] * 100:.1f} %, "
          f"max {stats['all_max_abs_error'] * 100:.1f} %")
    if over:
        print(f"DOES NOT FIT: {len(over)} of {len(outcomes)} cases need more memory than their "
              f"devices hold, though their recipes ran (marked '!'): {', '.join(over)}")
    return 0 if ok else 1


def _memory(o: Outcome) -> str:
    """'peak/capacity' in GB of a case's most loaded device, '!' when it does not fit."""
    if o.fits_memory is None:
        return "-"
    mark = "" if o.fits_memory else " !"
    return f"{o.memory_bytes / 1e9:.1f}/{o.capacity_bytes / 1e9:.0f}{mark}"
