"""Simulator speed: the issue's goals, each timed end to end in a fresh process.

- GPT-3 175B on 1,024 A100 (tp 8, pp 16, dp 8): under 10 s and 2 GB;
- GPT-3 175B on an ExaPOD (chip level): under 30 s;
- `dojo plan gpt3-175b --system exapod`: under 60 s;
- DeepSeek-V3 on 2,048 H100 with pp 16 and ep 64 simulated under 10 s; its plan searches on 256
  and 2,048 H100 under 60 s (issue 11 item 7); all under 2 GB.
Wall seconds on a shared machine drift with its load, so the child's CPU seconds are printed too.
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
    ("simulate deepseek-v3, 2,048 H100, dp128 pp16 ep64",
     ["simulate", "deepseek-v3", "--system", "h100-cluster:2048", "--batch", "15360", "--plan",
      "dp=128,pp=16,ep=64,mb=1,zero=1,recompute=full,stages=1:4:4:4:4:4:4:4:4:4:4:4:4:4:4:1"]),
    ("plan deepseek-v3, 256 H100 (batch 512)",
     ["plan", "deepseek-v3", "--system", "h100-cluster:256", "--batch", "512"]),
    ("plan deepseek-v3, 2,048 H100 (batch 4096)",
     ["plan", "deepseek-v3", "--system", "h100-cluster:2048", "--batch", "4096"]),
]


def timed(args: list[str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS MB) of `dojo ARGS` in a child process."""
    code = ("import resource, sys; from dojo.cli.main import main; rc = main(sys.argv[1:]); "
            "u = resource.getrusage(resource.RUSAGE_SELF); "
            "print(u.ru_utime + u.ru_stime, u.ru_maxrss, file=sys.stderr); sys.exit(rc)")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         check=True)
    wall = time.perf_counter() - start
    cpu, rss_kib = map(float, out.stderr.strip().splitlines()[-1].split())
    return wall, cpu, rss_kib / 1024


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
    print("| run | wall s | CPU s | peak RSS MB |\n|---|---|---|---|")
    for name, args in RUNS:
        wall, cpu, rss = timed(args)
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {rss:.0f} |")
    print(f"\nevent core: {engine_rate() / 1e6:.2f} M events/s")


if __name__ == "__main__":
    main()
