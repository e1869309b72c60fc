"""Start-up time of the torch-free paths: `dojo --help` and `dojo info exapod`.

Goal (foundation issue): each under 0.5 s, with no torch import on that path. Prints a markdown
table of the median and best of N runs, plus the cost of `import torch` measured the same way
for comparison, and the ExaPOD load time and peak memory in-process.
Run: .venv/bin/python bench/bench_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def _time(cmd: list[str], runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), min(samples)


def _exapod_in_process() -> tuple[float, float]:
    code = ("import resource, time; t=time.perf_counter(); "
            "from dojo.hardware import load_system, Topology, summarize; "
            "s=load_system('exapod'); Topology(s); summarize(s); "
            "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    seconds, rss_kib = out.stdout.split()
    return float(seconds), float(rss_kib) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    dojo = str(BIN / "dojo")
    probe = [sys.executable, "-c",
             "import sys; from dojo.cli.main import main; main(['info', 'exapod', '--json']); "
             "sys.exit(1 if 'torch' in sys.modules else 0)"]
    torch_free = subprocess.run(probe, capture_output=True).returncode == 0
    rows = [
        ("dojo --help", *_time([dojo, "--help"], args.runs)),
        ("dojo info exapod", *_time([dojo, "info", "exapod"], args.runs)),
        ("python -c 'import torch' (reference)", *_time([sys.executable, "-c", "import torch"],
                                                        max(3, args.runs // 3))),
    ]
    load_s, rss_mb = _exapod_in_process()
    print(f"machine: {platform.machine()}, {platform.python_implementation()} "
          f"{platform.python_version()}, cores: {len(__import__('os').sched_getaffinity(0))}")
    print("| command | median s | best s |\n|---|---|---|")
    for name, median, best in rows:
        print(f"| {name} | {median:.3f} | {best:.3f} |")
    print(f"\ntorch imported on the info path: {'no' if torch_free else 'YES'}")
    print(f"ExaPOD load + topology + summary in-process: {load_s * 1e3:.1f} ms, "
          f"peak RSS {rss_mb:.0f} MB (whole interpreter)")


if __name__ == "__main__":
    main()
