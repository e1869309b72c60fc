"""Where the CPU closed loop's residual sits, phase by phase: each model's forward and backward of
one micro-batch measured in this process (the runtime's own Trainer, `bench_rank_phases._step`),
against the simulated phase split into its ops' work and their dispatch (docs/benchmarks.md,
sixteenth round).

    .venv/bin/python bench/phase_dispatch.py [--models mlp,gpt,vit-b16] [--steps 20] [--gelu]

Per model (small preset, dp=1, FP32, one intra-op thread) and phase: the measured seconds (the
fastest main-thread CPU of each micro-batch index over the steps after the first fifth, the
median over the indices), the simulated seconds, the simulated work alone (every dispatch
figure at 0), the counted ops (elementwise ones apart), and the dispatch per non-elementwise op
that the measurement implies: (measured - work - elementwise ops x `launch_pointwise_s`) /
other ops, against the calibration's `launch_s` (a median over three tiny stacks,
bench/eager_stacks.py). A model whose implied figure differs from `launch_s` pays per op what
the stacks do not (or less).

`--gelu` times the exact GELU and its backward with oneDNN on and off (PyTorch hands an exact
GELU on a contiguous FP32 or BF16 tensor of more than one element to oneDNN's eltwise
primitive, which sets itself up on every call; the tanh variant never goes there).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from typing import Any

import torch

MODELS = ("mlp", "resnet18", "vit-b16", "gpt", "llama", "moe", "occupancy")


def measured(model: str, steps: int) -> tuple[float, float]:
    """(forward s, backward s) of one micro-batch of `model` at dp=1, as the module docstring."""
    from bench_rank_phases import rank_phases

    phases = rank_phases(0, 1, model, "dp=1", steps)["phases"]
    out = []
    for kind in ("forward", "backward"):
        per_index = [min(s[1] for s in samples[len(samples) // 5:])
                     for name, samples in phases.items() if name.startswith(kind + " ")]
        out.append(statistics.median(per_index))
    return out[0], out[1]


def simulated(model: str) -> dict[str, tuple[float, float, int, int, float, float]]:
    """Per phase: (simulated s, work s, other ops, elementwise ops, launch_s,
    launch_pointwise_s) of one micro-batch."""
    from dojo.runtime import Job
    from dojo.runtime.job import simulate_job
    from dojo.sim.simulate import prepare

    program = simulate_job(Job(model=model, plan="dp=1,precision=fp32", system="cpu")).program
    dev, _, _ = prepare(program)
    out = {}
    for phase in ("forward", "backward"):
        d = dev.for_phase(phase)
        cal = d.calibration
        bare = replace(d, calibration=replace(cal, launch_s=0.0, launch_pointwise_s=0.0))
        total = work = 0.0
        other = pointwise = 0
        for chunk in program.chunks:
            for op in getattr(chunk, phase):
                total += d.op_time(op)
                work += bare.op_time(op)
                n = (int(op.target[len("fused["):-1]) - op.inner_views
                     if op.target.startswith("fused[") else 1 - op.inner_views)
                pointwise += op.pointwise
                other += n - op.pointwise
        out[phase] = (total, work, other, pointwise, cal.launch_s, cal.launch_pointwise_s)
    return out


def table(models: list[str], steps: int) -> str:
    lines = ["| model | phase | measured ms | simulated ms | work ms | ops (+ elementwise) | "
             "launch_s us | implied us per op |", "|---|---|---|---|---|---|---|---|"]
    for model in models:
        meas = measured(model, steps)
        for (phase, (total, work, other, pw, launch, launch_pw)), m in zip(
                simulated(model).items(), meas):
            implied = (m - work - pw * launch_pw) / max(other, 1)
            lines.append(f"| {model} | {phase} | {m * 1e3:.3f} | {total * 1e3:.3f} | "
                         f"{work * 1e3:.3f} | {other} (+{pw}) | {launch * 1e6:.1f} | "
                         f"{implied * 1e6:.1f} |")
    return "\n".join(lines)


def _best(fn: Any, repeat: int = 2000) -> float:
    for _ in range(100):
        fn()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - start) / repeat)
    return best


def gelu_table(sizes: tuple[int, ...] = (2, 256, 4096, 65536)) -> str:
    """Microseconds of aten.gelu / gelu_backward (exact and tanh) with oneDNN on and off."""
    aten = torch.ops.aten
    lines = ["| elements | gelu on / off us | gelu_backward on / off us | "
             "gelu tanh on / off us |", "|---|---|---|---|"]
    for n in sizes:
        x, g = torch.randn(n), torch.randn(n)
        cells = []
        for fn in (lambda x=x: aten.gelu(x), lambda x=x, g=g: aten.gelu_backward(g, x),
                   lambda x=x: aten.gelu(x, approximate="tanh")):
            times = []
            for flag in (True, False):
                torch.backends.mkldnn.enabled = flag
                times.append(_best(fn) * 1e6)
            torch.backends.mkldnn.enabled = True
            cells.append(f"{times[0]:.2f} / {times[1]:.2f}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--gelu", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(table(args.models.split(","), args.steps))
    if args.gelu:
        print("\n" + gelu_table())


if __name__ == "__main__":
    main()
