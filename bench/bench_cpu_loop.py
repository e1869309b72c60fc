"""The closed loop on this machine: every zoo model's small preset, executed by `dojo run`'s
runtime and simulated on the `cpu` system, one process and dp, tp and pp of 2 over gloo.

    .venv/bin/python bench/bench_cpu_loop.py [--steps 6] [--repeats 3] [--models gpt,mlp]

Measured: per run, the fastest step of rank 0 after the first (warm-up) step; the minimum over
`--repeats` runs (the standard way to time on a shared machine; the load average is printed
with the table). Beside the wall time, the CPU time of the same steps (`step_cpu_s`: what an
idle core would take; waits on the other rank are not in it, and a loaded machine still inflates
it through shared caches and context switches) and of the thread that ran them
(`step_thread_cpu_s`: without gloo's threads, whose tcp loop busy-polls while a peer's data
waits for a receive not posted yet; with more than one rank it leaves out their real transfer
work too, ~0.1 ms per all-reduce: bench/bench_rank_phases.py). With `--phases`, dp=1 also as
the sum of the fastest times of its phases (`phase_minima`: millisecond windows, the most
robust on a loaded machine).
Simulated: `dojo.sim` on the `cpu` system for the same job (the program that ran).
Global batch 4, mb 1 (the runtime's defaults), FP32. tp needs the gpt models, pp gpt or llama.
Prints a markdown table (docs/benchmarks.md); `--json` prints the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from typing import Any

import torch

PLANS = ("dp=1", "dp=2", "tp=2", "pp=2")


def distinct_models() -> list[tuple[str, list[str]]]:
    """(name, aliases) per distinct small preset: gpt2-small's small preset is gpt's, etc."""
    from dojo.models import MODELS
    from dojo.models.zoo import make_config

    seen: dict[str, list[str]] = {}
    for name in MODELS.names():
        cfg = make_config(name, {}, small=True)
        seen.setdefault(f"{type(cfg).__name__}{cfg!r}", []).append(name)
    return [(next((n for n in names if n in ("gpt", "llama")), names[0]), names)
            for names in seen.values()]


def supports(model: str, plan: str) -> bool:
    """Whether the runtime runs `plan` for `model` (tp: gpt family; pp: gpt or llama)."""
    from dojo.models import MODELS

    factory = MODELS.get(model).make_model.__module__
    if plan.startswith("tp"):
        return factory.endswith(".gpt")
    if plan.startswith("pp"):
        return factory.endswith((".gpt", ".llama"))
    return True


def closed_loop(model: str, plan: str, steps: int, repeats: int
                ) -> tuple[float, float | None, float, float | None]:
    """(measured wall s, measured CPU s or None, simulated s, main-thread CPU s or None) per
    step of `model`'s small preset under `plan` (FP32); rank 0's fastest step after warm-up,
    best of `repeats` runs."""
    from dojo.runtime import Job, run_distributed

    job = Job(model=model, plan=f"{plan},precision=fp32", steps=steps, system="cpu")
    best, cpu, main, simulated = float("inf"), float("inf"), float("inf"), 0.0
    for _ in range(repeats):
        sim, results = run_distributed(job, timeout_s=120)
        best = min(best, min(results[0]["step_s"][1:]))
        cpu = min(cpu, min(results[0].get("step_cpu_s", [cpu])[1:] or [cpu]))
        main = min(main, min(results[0].get("step_thread_cpu_s", [main])[1:] or [main]))
        simulated = sim.result.step_time_s
    return (best, (cpu if cpu < float("inf") else None), simulated,
            (main if main < float("inf") else None))


def phase_minima(model: str, repeats: int = 60) -> float:
    """Seconds of one dp=1 step of `model`'s small preset as the sum of its phases' fastest
    times over `repeats` steps in this process (zero_grad, each micro-batch's forward and
    backward, the optimizer step): windows of a millisecond or less, which other jobs on a
    shared machine interrupt far less often than a whole step."""
    import time

    from dojo.runtime import Job
    from dojo.runtime.job import build_bundle, simulate_job
    from dojo.runtime.trainer import Trainer

    job = Job(model=model, plan="dp=1,precision=fp32", system="cpu")
    trainer = Trainer(simulate_job(job).program, build_bundle(job))
    micro_in, micro_tgt = trainer._micro_batches(*trainer.data.get(0))
    best = [float("inf")] * (2 * len(micro_in) + 2)
    for _ in range(repeats):
        marks = [time.perf_counter()]
        trainer.model.zero_grad(set_to_none=True)
        trainer.optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        for x, t in zip(micro_in, micro_tgt):
            loss = trainer.bundle.loss_fn(trainer.model(*x), *t) / len(micro_in)
            marks.append(time.perf_counter())
            loss.backward()
            marks.append(time.perf_counter())
        trainer.optimizer.step()
        marks.append(time.perf_counter())
        best = [min(b, t1 - t0) for b, t0, t1 in zip(best, marks, marks[1:])]
    return sum(best)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="", help="comma-separated (default: every preset)")
    parser.add_argument("--plans", default=",".join(PLANS).replace(",", ";"),
                        help="semicolon-separated plans")
    parser.add_argument("--phases", action="store_true",
                        help="also time dp=1 steps phase by phase in this process")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = distinct_models()
    if args.models:
        wanted = args.models.split(",")
        models = [(m, a) for m, a in models if m in wanted]
    if not args.json:
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch "
              f"{torch.__version__}, load average {os.getloadavg()[0]:.2f}; measured = min over "
              f"{args.repeats} runs x {args.steps - 1} steps")
        print("\n| model (small preset) | plan | measured s | simulated s | error | "
              "measured CPU s | error vs CPU | phase minima s | error vs phases | "
              "main-thread CPU s | error vs main thread |")
        print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    rows: list[dict[str, Any]] = []
    for model, aliases in models:
        for plan in args.plans.split(";"):
            if not supports(model, plan):
                continue
            real, cpu, pred, main_cpu = closed_loop(model, plan, args.steps, args.repeats)
            phases = phase_minima(model) if args.phases and plan == "dp=1" else None
            row = {"model": model, "aliases": aliases, "plan": plan, "measured_s": real,
                   "measured_cpu_s": cpu, "simulated_s": pred, "error": (pred - real) / real,
                   "error_cpu": (pred - cpu) / cpu if cpu else None, "phases_s": phases,
                   "error_phases": (pred - phases) / phases if phases else None,
                   "measured_main_cpu_s": main_cpu,
                   "error_main_cpu": (pred - main_cpu) / main_cpu if main_cpu else None}
            rows.append(row)
            if not args.json:
                label = "/".join(aliases)
                vs_cpu = f"{cpu:.4f} | {row['error_cpu']:+.1%}" if cpu else "- | -"
                vs_phases = f"{phases:.4f} | {row['error_phases']:+.1%}" if phases else "- | -"
                vs_main = (f"{main_cpu:.4f} | {row['error_main_cpu']:+.1%}" if main_cpu
                           else "- | -")
                print(f"| {label} | {plan} | {real:.4f} | {pred:.4f} | {row['error']:+.1%} | "
                      f"{vs_cpu} | {vs_phases} | {vs_main} |", flush=True)
    errors = [abs(r["error"]) for r in rows]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif errors:
        summary = [f"mean |error| {sum(errors) / len(errors):.1%}, max {max(errors):.1%}"]
        for key, label in (("error_cpu", "CPU"), ("error_main_cpu", "main-thread CPU"),
                           ("error_phases", "phase minima")):
            vs = [abs(r[key]) for r in rows if r[key] is not None]
            if vs:
                summary.append(f"vs {label} {sum(vs) / len(vs):.1%} (max {max(vs):.1%}, "
                               f"{sum(v <= 0.15 for v in vs)} of {len(vs)} within 15 %)")
        print(f"\n{'; '.join(summary)}; load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
