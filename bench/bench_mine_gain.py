"""Does mining for a failing slice raise it more than as many random clips? Mined rounds beside
a seeded random control, over independent training seeds, sized for a shared 2-core machine.

    .venv/bin/python bench/bench_mine_gain.py --out /tmp/gain [--seeds 8] [--rounds 2]
        [--steps 1000] [--budget 8] [--train 32] [--pool 96] [--val-mix 8] [--val-night 48]
        [--target night] [--jobs 1] [--threads 1]
    .venv/bin/python bench/bench_mine_gain.py --out /tmp/gain --table-only

Clips (`dojo data synth`, made once; every seed trains on the same clips): 3 cameras of 64 x 48,
8 frames, grid 32 x 32 over +-16 m; training set 32 clips (data seed 0) and pool 96 clips
(seed 2) from the natural scenario, weather and time-of-day mix (about 16 % night); held-out set
8 mixed clips (seed 1) plus 48 clips forced to night (seed 11), so the night slice's interval
over held-out clips is narrower than the effect measured. Slices (OUT/slices.toml): `night`
and `not_night`.

For each training seed S (0..seeds-1), independently: round 0 (OUT/sS/r0) is one ordinary
`dojo train occupancy --seed S` run, shared by both arms. Each later round R of each arm starts
from that arm's previous run P and adds `--budget` pool clips:
- mined (OUT/sS/score/rR): `dojo data mine P --slice T`;
- random (OUT/sS/random/rR): `dojo data mine P --by random --seed S+R` (`pick_random`, the draw
  of `--mine-by random`), not looking at the model or the slice;
T is `--target` (night: the slice the held-out set was built to test; `weakest`: P's weakest
slice, as `--rounds` picks it). Then `dojo train occupancy --train-set VERSION` trains a fresh
model with seed S and evaluates it on the same held-out clips. `--jobs` seeds run at once, each
seed's two arms side by side (up to 2 x jobs trainings, each on `--threads` torch threads: on
a shared 2-core machine one thread per run is 4-5x faster per step than two). Finished runs
are kept, so a stopped measurement resumes where it stopped; every run is a function of its
options and data, so the figures do not depend on how the runs were scheduled.

The result (stdout, and OUT/summary.json): per seed and round, each arm's IoU on the target
slice with its bootstrap interval over held-out clips; the paired difference mined - random per
seed and round, and over seeds its mean with a Student-t 95 % interval, paired t-test p and
exact sign-flip p (`dojo.train.gain.paired_seeds`); the same for the other slice (what mining
costs elsewhere) and for each arm against its previous round.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

SIZE = ["--cameras", "3", "--size", "64x48", "--frames", "8", "--grid", "32", "--range", "16"]
SLICES = """[slices.night]
where = "time_of_day = 'night'"

[slices.not_night]
where = "time_of_day <> 'night'"
"""
ARMS = ("score", "random")


def dojo(*args: str) -> list[str]:
    return [sys.executable, "-m", "dojo.cli.main", *args]


def quiet(*args: str) -> str:
    return subprocess.run(dojo(*args), check=True, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL).stdout.decode()


def make_data(out: Path, a: argparse.Namespace) -> None:
    """OUT/data/{train,val}, OUT/pool and OUT/slices.toml; val = mixed and night clips."""
    from dojo.data.catalog import index_set, write_version
    from dojo.data.subset import write_subset

    data = out / "data"
    if (data / "val" / "manifest.json").is_file():
        return
    for folder, clips, seed, extra in ((data / "train", a.train, 0, ()),
                                       (out / "sets" / "val_mix", a.val_mix, 1, ()),
                                       (out / "sets" / "val_night", a.val_night, 11,
                                        ("--time-of-day", "night")),
                                       (out / "pool", a.pool, 2, ())):
        if not (folder / "manifest.json").is_file():
            quiet("data", "synth", "--out", str(folder), "--clips", str(clips), "--seed",
                  str(seed), *SIZE, *extra)
    cat = str(out / "sets" / "catalog")
    hashes = [*index_set(str(out / "sets" / "val_mix"), cat, "val").clips,
              *index_set(str(out / "sets" / "val_night"), cat, "val").clips]
    write_subset(cat, write_version(cat, hashes).clips, data / "val")
    (out / "slices.toml").write_text(SLICES, encoding="utf-8")


def train(out: Path, run: Path, seed: int, a: argparse.Namespace, *extra: str) -> None:
    if (run / "metrics.json").is_file():
        return
    run.parent.mkdir(parents=True, exist_ok=True)
    with run.with_suffix(".log").open("wb") as log:
        code = subprocess.run(dojo("train", "occupancy", "--data", str(out / "data"), "--out",
                                   str(run), "--steps", str(a.steps), "--seed", str(seed),
                                   "--threads", str(a.threads),
                                   "--slices", str(out / "slices.toml"), *extra),
                              stdout=log, stderr=log).returncode
    if code:
        raise SystemExit(f"{run} failed (exit {code}): see {run.with_suffix('.log')}")


def metrics(run: Path) -> dict[str, Any]:
    return dict(json.loads((run / "metrics.json").read_text(encoding="utf-8")))


def next_version(out: Path, prev: Path, arm: str, seed: int, r: int,
                 a: argparse.Namespace) -> str:
    """The next round's training version of `arm`, recorded in prev/catalog."""
    from dojo.train.rounds import weakest_slice

    target = weakest_slice(metrics(prev)["slices"]) if a.target == "weakest" else a.target
    by = ["--by", "random", "--seed", str(seed + r)] if arm == "random" else []
    got = json.loads(quiet("data", "mine", str(prev), "--slice", target, "--budget",
                           str(a.budget), "--slices", str(out / "slices.toml"), *by))
    return str(got["version"])


def arm_round(out: Path, seed: int, arm: str, r: int, a: argparse.Namespace) -> None:
    """Round r of one arm of one seed: choose its clips from the previous run, train."""
    base = out / f"s{seed}"
    prev = base / "r0" if r == 1 else base / arm / f"r{r - 1}"
    run = base / arm / f"r{r}"
    if not (run / "metrics.json").is_file():
        version = next_version(out, prev, arm, seed, r, a)
        train(out, run, seed, a, "--train-set", version, "--catalog", str(prev / "catalog"))


def chain(out: Path, seed: int, a: argparse.Namespace) -> None:
    """Every run of one training seed: round 0, then both arms of each round side by side."""
    from dojo.data.catalog import index_set

    train(out, out / f"s{seed}" / "r0", seed, a)
    for r in range(1, a.rounds):
        for arm in ARMS:  # the pool, in each previous run's catalog, before the arms read it
            prev = out / f"s{seed}" / ("r0" if r == 1 else f"{arm}/r{r - 1}")
            if not (out / f"s{seed}" / arm / f"r{r}" / "metrics.json").is_file():
                index_set(str(out / "pool"), str(prev / "catalog"), "pool")
        with ThreadPoolExecutor(max_workers=len(ARMS)) as arms:
            list(arms.map(lambda arm, r=r: arm_round(out, seed, arm, r, a), ARMS))
    print(f"seed {seed} done", file=sys.stderr)


def measure(out: Path, a: argparse.Namespace) -> None:
    begin = time.perf_counter()
    make_data(out, a)
    print(f"data made: {time.perf_counter() - begin:.0f} s", file=sys.stderr)
    with ThreadPoolExecutor(max_workers=a.jobs) as pool:  # up to 2 x jobs trainings at once
        list(pool.map(lambda s: chain(out, s, a), range(a.seeds)))
    print(f"all runs done: {time.perf_counter() - begin:.0f} s wall", file=sys.stderr)


def run_of(out: Path, seed: int, arm: str, r: int) -> Path:
    return out / f"s{seed}" / ("r0" if r == 0 else f"{arm}/r{r}")


def summarize(out: Path, a: argparse.Namespace) -> dict[str, Any]:
    """Per seed and round, each arm's slice IoUs; paired differences over seeds."""
    from dojo.train.gain import paired_seeds

    seeds = [s for s in range(a.seeds)
             if all((run_of(out, s, arm, r) / "metrics.json").is_file()
                    for arm in ARMS for r in range(a.rounds))]
    runs = {(s, arm, r): metrics(run_of(out, s, arm, r))
            for s in seeds for arm in ARMS for r in range(a.rounds)}
    names = sorted(runs[seeds[0], "score", 0]["slices"]) if seeds else []
    result: dict[str, Any] = {"seeds": seeds, "runs": {
        f"s{s}/{arm}/r{r}": {"slices": m["slices"], "val_iou": m["val_iou"]}
        for (s, arm, r), m in runs.items()}, "rounds": {}}
    for r in range(1, a.rounds):
        per: dict[str, Any] = {}
        for name in [*names, "all"]:
            def iou(s: int, arm: str, rr: int, name: str = name) -> float:
                m = runs[s, arm, rr]
                return float(m["val_iou"] if name == "all" else m["slices"][name]["iou"])

            entry: dict[str, Any] = {}
            if len(seeds) >= 2:
                entry["mined_minus_random"] = paired_seeds(
                    [iou(s, "score", r) - iou(s, "random", r) for s in seeds])
                for arm in ARMS:
                    entry[f"{arm}_minus_previous"] = paired_seeds(
                        [iou(s, arm, r) - iou(s, arm, r - 1) for s in seeds])
            per[name] = entry
        result["rounds"][r] = per
    return result


def _ci(s: dict[str, Any]) -> str:
    lo, hi = s["ci95"]
    return f"{s['iou']:.3f} [{lo:.3f}, {hi:.3f}]"


def _stat(e: dict[str, Any]) -> str:
    lo, hi = e["ci95"]
    return (f"{e['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}], p_t {e['p_t']:.2g}, sign-flip "
            f"{e['p_sign_flip']:.2g}, {e['wins']}/{e['n']} > 0")


def table(summary: dict[str, Any], target: str, rounds: int) -> str:
    """Markdown: the target slice per seed and round, then the paired statistics."""
    runs = summary["runs"]
    lines = [f"| seed | round | {target} mined | {target} random | mined - random |",
             "|---|---|---:|---:|---:|"]
    for s in summary["seeds"]:
        lines.append(f"| {s} | 0 | {_ci(runs[f's{s}/score/r0']['slices'][target])} | "
                     "(same run) | |")
        for r in range(1, rounds):
            m, x = (runs[f"s{s}/{arm}/r{r}"]["slices"][target] for arm in ARMS)
            lines.append(f"| {s} | {r} | {_ci(m)} | {_ci(x)} | {m['iou'] - x['iou']:+.3f} |")
    widths = sorted(r["slices"][target]["ci95"][1] - r["slices"][target]["ci95"][0]
                    for r in runs.values())
    if widths:
        lines += ["", f"Seeds complete: {summary['seeds']}. Width of the {target} slice's 95 % "
                  f"interval over held-out clips, per run: median {widths[len(widths) // 2]:.3f}"
                  f" (range {widths[0]:.3f}-{widths[-1]:.3f})."]
    lines += ["", "| round | slice | mined - random (mean [95 % t], p) | mined - previous | "
              "random - previous |", "|---|---|---|---|---|"]
    for r, per in summary["rounds"].items():
        for name, e in per.items():
            if e:
                lines.append(f"| {r} | {name} | {_stat(e['mined_minus_random'])} | "
                             f"{_stat(e['score_minus_previous'])} | "
                             f"{_stat(e['random_minus_previous'])} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--out", required=True)
    for name, default in (("seeds", 8), ("rounds", 2), ("steps", 1000), ("budget", 8),
                          ("train", 32), ("pool", 96), ("val-mix", 8), ("val-night", 48),
                          ("jobs", 1), ("threads", 1)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--target", default="night", help="slice to mine for, or 'weakest'")
    p.add_argument("--table-only", action="store_true", help="summarize OUT's finished runs")
    a = p.parse_args()
    out = Path(a.out)
    if not a.table_only:
        measure(out, a)
    summary = summarize(out, a)
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print(table(summary, a.target if a.target != "weakest" else "night", a.rounds))


if __name__ == "__main__":
    main()
