"""Does mining help the weak slice more than as many random clips? Mined rounds beside a control.

    .venv/bin/python bench/bench_mine_gain.py --out /tmp/gain [--steps 600] [--rounds 3]
        [--budget 8] [--train 32] [--pool 96] [--val-mix 8] [--val-night 16]

A configuration small enough for a 2-core machine: 3 cameras of 64 x 48, 8 frames, grid 32 x 32
over +-16 m. Sets (all `dojo data synth`, natural scenario/weather/time-of-day mix unless said):
training 32 clips (seed 0), pool 96 (seed 2), held-out 8 mixed clips (seed 1) plus 16 clips
forced to night (seed 11), so the night slice has enough held-out clips for an interval.
Slices: `night` and `not_night` (OUT/slices.toml). Two runs of `dojo train occupancy --rounds K
--budget N` with the same options and pool, side by side (each on 2 torch threads):
`--mine-by score` (mining for the weakest slice) and `--mine-by random` (the control: the same
number of pool clips per round drawn at random, seeded). Round 0 is the same in both (same
options, same data: the two round-0 metrics must agree, and are checked). Prints a markdown
table of each round's slice IoU with its 95 % bootstrap interval (held-out clips resampled).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SIZE = ["--cameras", "3", "--size", "64x48", "--frames", "8", "--grid", "32", "--range", "16"]
SLICES = """[slices.night]
where = "time_of_day = 'night'"

[slices.not_night]
where = "time_of_day <> 'night'"
"""


def dojo(*args: str) -> list[str]:
    return [sys.executable, "-m", "dojo.cli.main", *args]


def synth(out: Path, clips: int, seed: int, *extra: str) -> None:
    subprocess.run(dojo("data", "synth", "--out", str(out), "--clips", str(clips), "--seed",
                        str(seed), *SIZE, *extra), check=True, stdout=subprocess.DEVNULL)


def make_data(out: Path, a: argparse.Namespace) -> Path:
    """OUT/data/{train,val} and OUT/pool; val = the mixed and the night held-out clips."""
    from dojo.data.catalog import index_set, write_version
    from dojo.data.subset import write_subset

    data = out / "data"
    synth(data / "train", a.train, 0)
    synth(out / "sets" / "val_mix", a.val_mix, 1)
    synth(out / "sets" / "val_night", a.val_night, 11, "--time-of-day", "night")
    synth(out / "pool", a.pool, 2)
    cat = str(out / "sets" / "catalog")
    hashes = [*index_set(str(out / "sets" / "val_mix"), cat, "val").clips,
              *index_set(str(out / "sets" / "val_night"), cat, "val").clips]
    write_subset(cat, write_version(cat, hashes).clips, data / "val")
    (out / "slices.toml").write_text(SLICES, encoding="utf-8")
    return data


def start(out: Path, data: Path, arm: str, a: argparse.Namespace) -> subprocess.Popen[bytes]:
    run = out / arm
    subprocess.run(dojo("data", "index", str(out / "pool"), "--catalog", str(run / "catalog"),
                        "--split", "pool"), check=True, stdout=subprocess.DEVNULL)
    log = (out / f"{arm}.log").open("wb")
    return subprocess.Popen(dojo("train", "occupancy", "--data", str(data), "--out", str(run),
                                 "--steps", str(a.steps), "--rounds", str(a.rounds),
                                 "--budget", str(a.budget), "--slices", str(out / "slices.toml"),
                                 "--mine-by", arm), stdout=log, stderr=log)


def cell(s: dict[str, object]) -> str:
    lo, hi = s["ci95"]  # type: ignore[misc]
    return f"{s['iou']:.3f} [{lo:.3f}, {hi:.3f}]"


def table(out: Path) -> str:
    runs = {arm: json.loads((out / arm / "metrics.json").read_text())["rounds"]
            for arm in ("score", "random")}
    r0 = [runs[arm][0]["slices"] for arm in runs]
    if r0[0] != r0[1]:
        raise SystemExit("round 0 differs between the two runs: not a controlled comparison")
    lines = ["| round | train clips | slice (held-out clips) | mined | random |",
             "|---|---:|---|---:|---:|"]
    for r, (m, c) in enumerate(zip(runs["score"], runs["random"], strict=True)):
        for name in sorted(m["slices"]):
            lines.append(f"| {r} | {m['train_clips']} / {c['train_clips']} | {name} "
                         f"({m['slices'][name]['clips']}) | {cell(m['slices'][name])} | "
                         f"{cell(c['slices'][name])} |")
        lines.append(f"| {r} | | all | {m['val_iou']:.3f} | {c['val_iou']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    for name, default in (("steps", 600), ("rounds", 3), ("budget", 8), ("train", 32),
                          ("pool", 96), ("val-mix", 8), ("val-night", 16)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--table-only", action="store_true", help="print the table of OUT's runs")
    a = p.parse_args()
    out = Path(a.out)
    if not a.table_only:
        begin = time.perf_counter()
        data = make_data(out, a)
        print(f"data made in {time.perf_counter() - begin:.0f} s", file=sys.stderr)
        procs = {arm: start(out, data, arm, a) for arm in ("score", "random")}
        for arm, proc in procs.items():
            if proc.wait():
                raise SystemExit(f"{arm} run failed: see {out / (arm + '.log')}")
        print(f"both runs done in {time.perf_counter() - begin:.0f} s wall", file=sys.stderr)
    print(table(out))


if __name__ == "__main__":
    main()
