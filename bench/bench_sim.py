"""Simulator speed: the issue's goals, each timed end to end in a fresh process.

- GPT-3 175B on 1,024 A100 (tp 8, pp 16, dp 8): under 10 s and 2 GB;
- GPT-3 175B on an ExaPOD (chip level): under 30 s;
- `dojo plan gpt3-175b --system exapod`: under 60 s.
Also SimPy-free: the event core is our own (dojo.sim.engine); its raw event rate is printed.
Run: .venv/bin/python bench/bench_sim.py
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

DOJO = str(Path(sys.executable).parent / "dojo")
RUNS = [
    ("simulate gpt3-175b, 1024 A100, dp8 tp8 pp16 (interleave 3)",
     ["simulate", "gpt3-175b", "--system", "a100-cluster:1024", "--batch", "1536",
      "--plan", "dp=8,tp=8,pp=16,interleave=3,recompute=selective,sp=on"]),
    ("simulate gpt3-175b, ExaPOD (3,000 D1), dp125 tp8 pp3",
     ["simulate", "gpt3-175b", "--system", "exapod", "--batch", "3000",
      "--plan", "dp=125,tp=8,pp=3,recompute=full,sp=on,zero=1"]),
    ("plan gpt3-175b --system exapod", ["plan", "gpt3-175b", "--system", "exapod",
                                         "--batch", "3000"]),
    ("plan gpt3-175b --system exapod --batch 1536 (issue 11)",
     ["plan", "gpt3-175b", "--system", "exapod", "--batch", "1536"]),
]


def timed(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of `dojo ARGS` in a child process."""
    code = ("import resource, sys; from dojo.cli.main import main; rc = main(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
            "sys.exit(rc)")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         check=True)
    wall = time.perf_counter() - start
    rss_kib = float(out.stderr.strip().splitlines()[-1])
    return wall, rss_kib / 1024


def engine_rate() -> float:
    from dojo.sim.engine import Engine

    engine = Engine()
    count = 200_000
    for i in range(count):
        engine.at(float(i % 977), lambda: None)
    start = time.perf_counter()
    engine.run()
    return count / (time.perf_counter() - start)


def main() -> None:
    print("| run | wall s | peak RSS MB |\n|---|---|---|")
    for name, args in RUNS:
        wall, rss = timed(args)
        print(f"| {name} | {wall:.1f} | {rss:.0f} |")
    print(f"\nevent core: {engine_rate() / 1e6:.2f} M events/s")


if __name__ == "__main__":
    main()
