"""What a 16 KB gloo all-reduce between two ranks in lockstep adds to the wall, by the kind and
amount of work between two of them (docs/benchmarks.md, fifteenth round; the evidence behind
`dojo.sim.eager.wait_time` charging `wait_resume_s` on every wait).

    .venv/bin/python bench/lockstep_work.py [--rounds 5]

Two ranks (`dojo.runtime.launch`, one intra-op thread each) run some work, then an all-reduce,
over and over; per case, the fastest mean of 20 iterations over `--rounds` x 120, alone and
then in lockstep, the two alternating (as `rank_costs.lockstep`). The work:
- module code: the calibration's MLP stack (`eager_stacks`) forward under no_grad, its
  forward with autograd, and one and two whole training steps;
- plain ATen: 1-64 tiny 64 x 64 matmul-tanh steps (~6 us each) from a Python loop.
Printed: the work alone (us) and the excess of the lockstep (us), the mean of the two ranks.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

MODULE = ("none", "forward, no grad", "forward", "1 step", "2 steps")
PLAIN = (1, 4, 16, 64)
ITERS, WINDOW = 120, 20


def _work(name: str, model: Any, x: torch.Tensor, a: torch.Tensor, loss: Any) -> None:
    if name == "forward, no grad":
        with torch.no_grad():
            model(x)
    elif name == "forward":
        loss(model(x))
    elif name.endswith("step") or name.endswith("steps"):
        for _ in range(int(name.split()[0])):
            model.zero_grad(set_to_none=True)
            loss(model(x)).backward()
    elif name.startswith("matmul"):
        y = a
        for _ in range(int(name.split()[1])):
            y = torch.tanh(y @ a)


def _rank(rank: int, world: int, rounds: int) -> list[tuple[float, float]]:
    import sys
    from pathlib import Path


    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from eager_stacks import _loss, _stacks
    from rank_costs import windowed_wall

    model, x = _stacks()["mlp"]
    a, buf = torch.randn(64, 64) / 8, torch.ones(4096)
    cases = list(MODULE) + [f"matmul {n}" for n in PLAIN]
    for _ in range(20):
        _work("1 step", model, x, a, _loss)
    best = [[float("inf"), float("inf")] for _ in cases]
    for _ in range(rounds):
        for i, name in enumerate(cases):
            for locked in (0, 1):
                wall = windowed_wall(lambda n=name: _work(n, model, x, a, _loss),
                                     buf if locked else None, ITERS, WINDOW)
                best[i][locked] = min(best[i][locked], wall)
    return [(alone, locked) for alone, locked in best]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from dojo.runtime.launch import launch

    out = launch(_rank, 2, (args.rounds,), timeout_s=900, threads=1)
    cases = list(MODULE) + [f"matmul {n}" for n in PLAIN]
    print("| work between | work alone us | excess us |\n|---|---|---|")
    for i, name in enumerate(cases):
        alone = (out[0][i][0] + out[1][i][0]) / 2
        locked = (out[0][i][1] + out[1][i][1]) / 2
        print(f"| {name} | {alone * 1e6:.1f} | {(locked - alone) * 1e6:.1f} |")


if __name__ == "__main__":
    main()
