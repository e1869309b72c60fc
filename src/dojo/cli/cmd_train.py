"""`dojo train occupancy`: train the occupancy network here, simulate it on Dojo, write a report.

    dojo train occupancy [--system v1] [--plan auto] [--precision fp32|bf16|cfp8] [--steps N]
                         [--out DIR] [--data DIR] [--resume] [--batch B] [--lr LR] [--seed S]
                         [--threads 2] [--policy skip|error] [--synth] [--measure-decode]
                         [--rounds K] [--budget N] [--mine-by score|random]
                         [--train-set VERSION_OR_DIR [--catalog CATALOG]] [--json]

Progress (step, loss, samples/s, ETA) is one carriage-return line on stderr; the summary (or
metrics.json with --json) goes to stdout.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dojo.cli.common import print_json
from dojo.errors import ConfigError

_NUMBERS = {"steps": int, "batch_size": int, "lr": float, "seed": int, "threads": int,
            "rounds": int, "budget": int}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a driving model here, simulate it on Dojo, report",
                       description="Train the occupancy network on synthetic driving clips on "
                       "this machine, evaluate IoU on held-out clips, checkpoint, and write "
                       "DIR/report.html, DIR/trace.json and DIR/metrics.json with the large "
                       "configuration simulated on Dojo and on a GPU cluster.")
    p.add_argument("model", help="model to train (occupancy)")
    p.add_argument("--system", default="v1", help="Dojo system to simulate (default v1)")
    p.add_argument("--plan", default="auto", help="plan for the simulated step (default auto)")
    p.add_argument("--precision", default="fp32", help="fp32, bf16 or cfp8 (default fp32)")
    p.add_argument("--steps", default=None, help="optimizer steps (default 600)")
    p.add_argument("--batch", dest="batch_size", default=None, help="samples per step (4)")
    p.add_argument("--lr", default=None, help="peak learning rate (default 3e-3)")
    p.add_argument("--seed", default=None, help="random seed (default 0)")
    p.add_argument("--threads", default=None, help="torch CPU threads for training (default 2; "
                   "losses differ in the last bits with another count)")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--data", default="", help="folder with train/ and val/ clip sets "
                   "(default OUT/../data, synthesized when missing; a given --data must hold "
                   "both unless --synth)")
    p.add_argument("--synth", action="store_true", help="synthesize missing clip sets in --data")
    p.add_argument("--measure-decode", action="store_true", help="measure decode rates on this "
                   "machine instead of the recorded calibration (figures then vary run to run)")
    p.add_argument("--policy", default="skip", help="bad clips: skip (warn, count) or error")
    p.add_argument("--slices", default="", help="slices file (TOML) for IoU by slice (default: "
                   "one slice per scenario, weather and time of day)")
    p.add_argument("--rounds", default=None, help="mining rounds: after round 0, mine --budget "
                   "clips for the weakest slice and retrain (default 1: no mining)")
    p.add_argument("--budget", default=None, help="clips mined per round (default 8)")
    p.add_argument("--mine-by", default="score", help="how rounds choose pool clips: score "
                   "(mining, default) or random (the control: as many clips drawn at random)")
    p.add_argument("--train-set", default="", help="train on this clip set folder or dataset "
                   "version ID (of --catalog) instead of DATA/train; DATA/val stays held out")
    p.add_argument("--catalog", default="", help="catalog holding the --train-set version "
                   "(default OUT/catalog; RUN/catalog for a version mined from RUN)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--json", action="store_true", help="print metrics.json to stdout")
    p.set_defaults(run=run)


def options_from_args(args: argparse.Namespace) -> Any:
    """`TrainOptions` from the command line; bad values are `ConfigError`s naming the flag."""
    from dojo.config import NUMBER_FORM, ascii_float, ascii_int, parse
    from dojo.train import TrainOptions

    if args.model != "occupancy":
        raise ConfigError("dojo train", "model", args.model, "occupancy")
    values: dict[str, Any] = {"out": args.out, "data": args.data, "system": args.system,
                              "plan": args.plan, "precision": args.precision,
                              "policy": args.policy, "resume": args.resume, "synth": args.synth,
                              "measure_decode": args.measure_decode, "slices": args.slices,
                              "mine_by": args.mine_by, "train_set": args.train_set,
                              "catalog": args.catalog}
    for key, kind in _NUMBERS.items():
        raw = getattr(args, key)
        if raw is None:
            continue
        value = ascii_int(raw) if kind is int else ascii_float(raw)
        if value is None:
            flag = "--batch" if key == "batch_size" else f"--{key}"
            raise ConfigError(flag, key, raw, f"{'an integer' if kind is int else 'a number'} "
                              f"in {NUMBER_FORM}")
        values[key] = value
    return parse(TrainOptions, values, "dojo train")


class _Bar:
    """Renders progress events on stderr: a carriage-return line while training."""

    def __init__(self) -> None:
        self.open = False

    def __call__(self, event: Any) -> None:
        if event.phase == "data":
            sys.stderr.write(f"\rdojo train: {event.message}")
            self.open = True
        elif event.phase == "train":
            done = event.step / event.steps if event.steps else 1.0
            bar = "#" * int(24 * done)
            eta = int(event.eta_s)
            line = (f"\rtrain [{bar:<24}] {event.step}/{event.steps}  loss {event.loss:.4f}  "
                    f"{event.samples_per_s:.1f} samples/s  ETA {eta // 60}:{eta % 60:02d}")
            sys.stderr.write(line)
            self.open = True
        else:
            self.close()
            sys.stderr.write(f"dojo train: {event.message}\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.open:
            sys.stderr.write("\n")
            self.open = False


def run(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    from dojo.train import train_occupancy
    from dojo.train.report import metrics

    bar = _Bar()
    try:
        result = train_occupancy(opts, bar)
    finally:
        bar.close()
    if args.json:
        print_json(metrics(result))
        return 0
    m = metrics(result)
    sim = m["simulated"]
    print(f"held-out IoU {m['val_iou']:.3f} (untrained {m['baseline_iou']:.3f}) after "
          f"{m['steps']} steps, final loss {m['train_loss'][-1]:.4f}")
    print(f"simulated occupancy-large on {sim['system']}: plan {sim['plan']}, step "
          f"{sim['step_time_s'] * 1e3:.3g} ms, {sim['samples_per_s']:.4g} samples/s, "
          f"{sim['energy_j']:.4g} J/step; {m['data_path']['hosts_needed']} hosts needed")
    for name in ("report", "trace", "metrics", "bev"):
        print(f"{name:8s} {result.files[name]}")
    return 0
