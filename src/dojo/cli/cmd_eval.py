"""`dojo eval RUN [--slices FILE] [--json]`: held-out IoU by slice of a finished training run.

Prints a table (slice, clips, IoU, 95 % bootstrap interval) or, with --json, the mapping that
metrics.json holds under `slices`. Writes nothing.
"""

from __future__ import annotations

import argparse
from typing import Any

from dojo.cli.common import print_json


def add_parser(sub: Any) -> None:
    p = sub.add_parser("eval", help="held-out IoU by slice of a `dojo train` run",
                       description="Reload a training run's model and evaluate it on its "
                       "held-out clips, per slice of the clip catalog, with 95 % bootstrap "
                       "intervals over clips.")
    p.add_argument("run_dir", metavar="RUN", help="the --out folder of `dojo train occupancy`")
    p.add_argument("--slices", default="", help="slices file (TOML; default: one slice per "
                   "scenario, weather and time of day)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dojo.data.query import load_slices

    slices = load_slices(args.slices) if args.slices else None
    from dojo.train.evalrun import evaluate_run

    result = evaluate_run(args.run_dir, slices)
    if args.json:
        print_json(result)
        return 0
    from dojo.cli.cmd_catalog import render

    rows = [(name, v["clips"], v["iou"], v["ci95"][0], v["ci95"][1], v["weight"])
            for name, v in result["slices"].items()]
    print(f"held-out IoU {result['val_iou']:.3f} (all clips)")
    print(render(["slice", "clips", "iou", "ci95_lo", "ci95_hi", "weight"], rows, "table"),
          end="")
    return 0
