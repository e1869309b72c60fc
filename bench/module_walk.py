"""What an eager step spends per nn.Module walking its model: the figure behind `module_walk_s`
(bench/calibrate_cpu.py, step 5; docs/benchmarks.md, twentieth round).

    .venv/bin/python bench/module_walk.py

Every step of the runtime (`dojo.runtime.trainer.Trainer.step`) calls `model.zero_grad` and
`model.train()` on the whole model (each rank holds all of it), and both recurse over every
module, whatever it holds: `train()` sets each module's flag, `zero_grad` walks each module's
parameters. Measured, the two calls on a model of nested parameterless modules (an
`nn.Sequential` of `nn.Sequential(nn.Identity())` pairs) of two sizes: the difference over the
difference in modules, the fastest of the rounds (seconds per module). Their parameters'
share is the optimizer's per-tensor figure (`optimizer_tensor_s`).
"""

from __future__ import annotations

import time

import torch

SIZES = (8, 136)  # modules besides the root


def _walk_s(modules: int, repeat: int) -> tuple[float, int]:
    """(fastest seconds of zero_grad + train() over `repeat` calls, modules walked)."""
    model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Identity())
                                  for _ in range(modules // 2)])
    count = sum(1 for _ in model.modules())
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        model.train()
        best = min(best, time.perf_counter() - start)
    return best, count


def module_walk(rounds: int = 3, repeat: int = 200) -> float:
    """Seconds per module of `model.zero_grad(set_to_none=True)` and `model.train()`."""
    few = min((_walk_s(SIZES[0], repeat) for _ in range(rounds)), key=lambda r: r[0])
    many = min((_walk_s(SIZES[1], repeat) for _ in range(rounds)), key=lambda r: r[0])
    return max(0.0, (many[0] - few[0]) / (many[1] - few[1]))


if __name__ == "__main__":
    print(f"{module_walk() * 1e6:.2f} us per module")
