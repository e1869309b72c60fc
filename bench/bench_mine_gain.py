"""Does mining help the weakest slice more than as many random clips? Mined rounds beside a
seeded random control, on a configuration small enough for a 2-core machine.

    .venv/bin/python bench/bench_mine_gain.py --out /tmp/gain [--steps 1500] [--rounds 3]
        [--budget 8] [--train 32] [--pool 96] [--val-mix 8] [--val-night 16] [--seed 0]
        [--threads 1]
    .venv/bin/python bench/bench_mine_gain.py --out /tmp/gain --table-only

Clips (`dojo data synth`): 3 cameras of 64 x 48, 8 frames, grid 32 x 32 over +-16 m; training
set 32 clips (seed 0) and pool 96 clips (seed 2) from the natural scenario, weather and
time-of-day mix (about 16 % night); held-out set 8 mixed clips (seed 1) plus 16 clips forced
to night (seed 11), so a night slice has enough held-out clips for a usable interval. Slices
(OUT/slices.toml): `night` and `not_night`.

Round 0 (OUT/r0) is one ordinary `dojo train occupancy` run, shared by both arms. Each later
round R of each arm starts from that arm's previous run P:
- mined (OUT/score/rR): `dojo data mine P --slice W --budget N`, W = P's weakest slice (lowest
  IoU among slices with at least 2 held-out clips, `dojo.train.rounds.weakest_slice`);
- random (OUT/random/rR): `dojo.train.rounds.pick_random`: N pool clips not yet trained on,
  drawn with numpy.random.default_rng(seed + R) (the same as `--mine-by random`);
then `dojo train occupancy --train-set VERSION --catalog P/catalog` trains a fresh model (same
options and seed) on the new version and evaluates it on the same held-out clips. The two arms
of a round run side by side, each on `--threads` torch threads (1: on a shared 2-core machine
one thread trained this model 4-5x faster per step than two, 0.024 against 0.130 s at load
3). Each run's metrics.json is written when it finishes, so a stopped measurement keeps its
finished rounds (`--table-only` prints them). The table: per round and arm, each slice's
pooled IoU with its 95 % bootstrap interval (1,000 resamples of the held-out clips of the
slice) and the clips trained on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
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


def make_data(out: Path, a: argparse.Namespace) -> Path:
    """OUT/data/{train,val}, OUT/pool and OUT/slices.toml; val = mixed and night clips."""
    from dojo.data.catalog import index_set, write_version
    from dojo.data.subset import write_subset

    data = out / "data"
    for folder, clips, seed, extra in ((data / "train", a.train, a.seed, ()),
                                       (out / "sets" / "val_mix", a.val_mix, a.seed + 1, ()),
                                       (out / "sets" / "val_night", a.val_night, a.seed + 11,
                                        ("--time-of-day", "night")),
                                       (out / "pool", a.pool, a.seed + 2, ())):
        quiet("data", "synth", "--out", str(folder), "--clips", str(clips), "--seed", str(seed),
              *SIZE, *extra)
    cat = str(out / "sets" / "catalog")
    hashes = [*index_set(str(out / "sets" / "val_mix"), cat, "val").clips,
              *index_set(str(out / "sets" / "val_night"), cat, "val").clips]
    write_subset(cat, write_version(cat, hashes).clips, data / "val")
    (out / "slices.toml").write_text(SLICES, encoding="utf-8")
    return data


def train(out: Path, run: Path, a: argparse.Namespace, *extra: str) -> subprocess.Popen[bytes]:
    log = run.with_suffix(".log").open("wb")
    return subprocess.Popen(dojo("train", "occupancy", "--data", str(out / "data"), "--out",
                                 str(run), "--steps", str(a.steps), "--seed", str(a.seed),
                                 "--threads", str(a.threads),
                                 "--slices", str(out / "slices.toml"), *extra),
                            stdout=log, stderr=log)


def wait(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for name, proc in procs.items():
        if proc.wait():
            raise SystemExit(f"{name} failed (exit {proc.returncode}): see its .log")


def metrics(run: Path) -> dict[str, Any]:
    return dict(json.loads((run / "metrics.json").read_text(encoding="utf-8")))


def next_version(out: Path, prev: Path, arm: str, r: int, a: argparse.Namespace) -> str:
    """The next round's training version of `arm`, recorded in prev/catalog."""
    from dojo.data.catalog import read_version
    from dojo.train.rounds import pick_random, weakest_slice

    m = metrics(prev)
    if prev.name != "r0":  # r0's catalog got the pool before it trained
        quiet("data", "index", str(out / "pool"), "--catalog", str(prev / "catalog"),
              "--split", "pool")
    target = weakest_slice(m["slices"])
    if arm == "score":
        got = json.loads(quiet("data", "mine", str(prev), "--slice", target, "--budget",
                               str(a.budget), "--slices", str(out / "slices.toml")))
        return str(got["version"])
    base = read_version(str(prev / "catalog"), m["dataset"]["train"])
    return pick_random(str(prev / "catalog"), base, target, a.budget, "pool", a.seed + r).version.id


def measure(out: Path, a: argparse.Namespace) -> None:
    begin = time.perf_counter()
    make_data(out, a)
    quiet("data", "index", str(out / "pool"), "--catalog", str(out / "r0" / "catalog"),
          "--split", "pool")
    print(f"data made: {time.perf_counter() - begin:.0f} s", file=sys.stderr)
    wait({"r0": train(out, out / "r0", a)})
    print(f"round 0 done: {time.perf_counter() - begin:.0f} s", file=sys.stderr)
    for r in range(1, a.rounds):
        procs = {}
        for arm in ARMS:
            prev = out / "r0" if r == 1 else out / arm / f"r{r - 1}"
            version = next_version(out, prev, arm, r, a)
            (out / arm).mkdir(exist_ok=True)
            procs[f"{arm}/r{r}"] = train(out, out / arm / f"r{r}", a, "--train-set", version,
                                         "--catalog", str(prev / "catalog"))
        wait(procs)
        print(f"round {r} done: {time.perf_counter() - begin:.0f} s", file=sys.stderr)


def cell(s: dict[str, Any] | None) -> str:
    if s is None:
        return "-"
    lo, hi = s["ci95"]
    return f"{s['iou']:.3f} [{lo:.3f}, {hi:.3f}]"


def trained(out: Path, run: Path) -> str:
    """Clips of the run's training version, and how many of them are night clips."""
    from dojo.data.catalog import read_version
    from dojo.data.query import add_slices, connect, load_slices

    version = read_version(str(run / "catalog"), metrics(run)["dataset"]["train"])
    con = connect(str(run / "catalog"))
    add_slices(con, load_slices(str(out / "slices.toml")))
    night = {h for (h,) in con.execute("SELECT clip_hash FROM slice_night").fetchall()}
    return f"{len(version.clips)} ({len(set(version.clips) & night)} night)"


def table(out: Path, rounds: int) -> str:
    """Markdown: each round's slices for both arms (round 0 is shared)."""
    lines = ["| round | slice (held-out clips) | mined: IoU [95 %] | random: IoU [95 %] |",
             "|---|---|---:|---:|"]
    for r in range(rounds):
        runs = {arm: (out / "r0" if r == 0 else out / arm / f"r{r}") for arm in ARMS}
        got = {arm: metrics(run) for arm, run in runs.items() if (run / "metrics.json").is_file()}
        if not got:
            break
        any_m = next(iter(got.values()))
        for name in sorted(any_m["slices"]):
            clips = any_m["slices"][name]["clips"]
            lines.append(f"| {r} | {name} ({clips}) | "
                         + " | ".join(cell(got[arm]["slices"].get(name) if arm in got else None)
                                      for arm in ARMS) + " |")
        lines.append(f"| {r} | clips trained on | "
                     + " | ".join(trained(out, runs[arm]) if arm in got else "-"
                                  for arm in ARMS) + " |")
        lines.append(f"| {r} | all held-out | "
                     + " | ".join(f"{got[arm]['val_iou']:.3f}" if arm in got else "-"
                                  for arm in ARMS) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--out", required=True)
    for name, default in (("steps", 1500), ("rounds", 3), ("budget", 8), ("train", 32),
                          ("pool", 96), ("val-mix", 8), ("val-night", 16), ("seed", 0),
                          ("threads", 1)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--table-only", action="store_true", help="print the table of OUT's runs")
    a = p.parse_args()
    out = Path(a.out)
    if not a.table_only:
        measure(out, a)
    print(table(out, a.rounds))


if __name__ == "__main__":
    main()
