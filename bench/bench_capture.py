"""Capture time and peak memory: gpt2-small (real tensors), resnet50 and gpt3-175b (fake).

    .venv/bin/python bench/bench_capture.py [--rounds 3] [--models gpt2-small,resnet50,gpt3-175b]

Each model runs in its own child process on one thread, so its peak RSS (getrusage ru_maxrss)
is its own: building the model (real weights for gpt2-small; "meta" for the fake ones) plus
`dojo.capture` of one AdamW training step. Capture time is the best of `--rounds` captures;
build time is reported apart. Goals (issue): gpt3-175b under 30 s and 2 GB on 2 cores.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

# name -> (device, batch, seq): the published training shapes, batch 1
CASES = {
    "gpt2-small": ("cpu", 1, 1024),
    "resnet50": ("meta", 1, None),
    "gpt3-175b": ("meta", 1, 2048),
}


def measure(name: str, rounds: int) -> dict[str, float]:
    """Build `name`, capture it `rounds` times; seconds and peak RSS in bytes (Linux KiB x 1024)."""
    import resource

    import torch

    from dojo.capture import capture
    from dojo.graph import phase_totals
    from dojo.models import build

    torch.set_num_threads(1)
    device, batch, seq = CASES[name]
    start = time.perf_counter()
    bundle = build(name, batch=batch, seq=seq, device=device)
    built = time.perf_counter() - start
    best = float("inf")
    flops = 0
    for _ in range(rounds):
        opt = bundle.make_optimizer(bundle.model.parameters())
        t0 = time.perf_counter()
        graph = capture(bundle.model, bundle.example_inputs, bundle.loss_fn, opt,
                        targets=bundle.targets, name=name).graph
        best = min(best, time.perf_counter() - t0)
        flops = sum(t.flops for t in phase_totals(graph).values())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"build_s": built, "capture_s": best, "peak_rss": rss, "ops": len(graph.ops),
            "flops": flops}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default=",".join(CASES))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.stdout.write(json.dumps(measure(args.child, args.rounds)) + "\n")
        return 0
    print("| model | tensors | build (s) | capture (s) | peak RSS (MB) | IR ops | step FLOP |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", name, "--rounds",
                              str(args.rounds)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        kind = "real" if CASES[name][0] == "cpu" else "fake"
        print(f"| {name} | {kind} | {r['build_s']:.2f} | {r['capture_s']:.2f} | "
              f"{r['peak_rss'] / 1e6:.0f} | {r['ops']:,} | {r['flops']:.3e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
