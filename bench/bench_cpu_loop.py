"""The closed loop on this machine: every zoo model's small preset, executed by `dojo run`'s
runtime and simulated on the `cpu` system, one process and dp, tp and pp of 2 over gloo.

    .venv/bin/python bench/bench_cpu_loop.py [--steps 6] [--repeats 3] [--models gpt,mlp]

Measured: per run, the fastest step of rank 0 after the first (warm-up) step; the minimum over
`--repeats` runs (the standard way to time on a shared machine; the load average is printed
with the table). The wall step ("measured s", "error") is the comparison: what `dojo run
--json` reports and a user waits for, including a rank's waits on the other (pipeline
bubbles, tp collectives), which the simulated step holds too. Beside the wall time, the CPU
time of the same steps (`step_cpu_s`: what an idle core would take; waits on the other rank
are not in it, and a loaded machine still inflates it through shared caches and context
switches) and of the thread that ran them
(`step_thread_cpu_s`: without gloo's threads, whose tcp loop busy-polls while a peer's data
waits for a receive not posted yet; with more than one rank it leaves out their real transfer
work too, ~0.1 ms per all-reduce: bench/bench_rank_phases.py). With `--phases`, dp=1 also in this
process, the runtime's whole `Trainer.step` alternating with the same step phase by phase
(`phase_minima`, bench/step_gap.py): the fastest whole step ("in-process step") and the sum
of the phases' fastest times, both main-thread CPU at the same moments. The worker's steps
and these are seconds apart, and this machine's speed moves 1.5-2x over seconds: compare the
simulation with the in-process step where the two measurements disagree.
Simulated: `dojo.sim` on the `cpu` system for the same job (the program that ran).
Global batch 4, mb 1 (the runtime's defaults), FP32. tp needs gpt, llama, vit or an MoE
decoder, pp gpt, llama or an MoE decoder.
Prints a markdown table (docs/benchmarks.md) and a summary, which gives the spread of the
main-thread CPU between the runs (each run is its own processes: invocations seconds apart);
`--json` prints the rows (with each run's main-thread CPU, `main_cpu_runs_s`).

Against drift (`--recalibrate fast|all`): the machine's state moves between invocations minutes
apart (the same dp=1 step 1.1-1.5x slower a minute later on a quiet machine), so the committed
calibration describes a moment, not the rows. With the option, right before each model's rows
the calibration is measured again (fast: the dispatch and host figures, ~20-30 s; all: the
rates too, bench/fresh_calibration.py) and every row is also simulated with it: extra columns
(simulated with it, its error against the main-thread CPU, each run's main-thread CPU), and a
table of the re-measured figures against the committed ones per model. The default run is
unchanged apart from the summary's spread (and the JSON's `main_cpu_runs_s`).

Against the machine's states (`--sweeps S`): a shared VM's speed also jumps between states up
to 2x apart that last a second or more (bench/step_gap.py --series), so a row whose runs all
fall in a slow state reads slow. With S > 1 the whole table is measured S times over, row
after row, and each row keeps the fastest of its S x `--repeats` runs: its runs are minutes
apart instead of seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from statistics import median
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fresh_calibration
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
    """Whether the runtime runs `plan` for `model` (tp: gpt family, llama, vit and the MoE
    decoders; pp: gpt, llama and the MoE decoders)."""
    from dojo.models import MODELS

    factory = MODELS.get(model).make_model.__module__
    if plan.startswith("tp"):
        return factory.endswith((".gpt", ".llama", ".vit", ".moe", ".moelm"))
    if plan.startswith("pp"):
        return factory.endswith((".gpt", ".llama", ".moe", ".moelm"))
    return True


def closed_loop(model: str, plan: str, steps: int, repeats: int
                ) -> tuple[float, float | None, float, float | None, list[float], list[float]]:
    """(measured wall s, measured CPU s or None, simulated s, main-thread CPU s or None, each
    run's main-thread CPU s) per step of `model`'s small preset under `plan` (FP32); rank 0's
    fastest step after warm-up, best of `repeats` runs (each run its own processes: the
    fifth item is the spread between invocations; the last, every run's steps after warm-up,
    whose median is what `dojo run --json` reports)."""
    from dojo.runtime import Job, run_distributed

    job = Job(model=model, plan=f"{plan},precision=fp32", steps=steps, system="cpu")
    best, cpu, main, simulated = float("inf"), float("inf"), float("inf"), 0.0
    runs, steady = [], []
    for _ in range(repeats):
        sim, results = run_distributed(job, timeout_s=120)
        steady += results[0]["step_s"][1:]
        best = min(best, min(results[0]["step_s"][1:]))
        cpu = min(cpu, min(results[0].get("step_cpu_s", [cpu])[1:] or [cpu]))
        runs.append(min(results[0].get("step_thread_cpu_s", [main])[1:] or [main]))
        main = min(main, runs[-1])
        simulated = sim.result.step_time_s
    return (best, (cpu if cpu < float("inf") else None), simulated,
            (main if main < float("inf") else None), runs, steady)


def phase_minima(model: str, rounds: int = 30) -> tuple[float, float]:
    """(sum of the phases' fastest times, fastest whole step) in seconds of main-thread CPU of
    one dp=1 step of `model`'s small preset, both in this process with the runtime's
    `Trainer.step` and the same step phase by phase (zero_grad, each micro-batch's forward and
    backward, the optimizer) alternating for `rounds` rounds (`step_gap.interleaved`): the
    machine's speed moves 1.5-2x over seconds, so a comparison across processes or moments
    mixes its states; this one does not."""
    from step_gap import interleaved

    e = interleaved(model, rounds)
    return sum(min(v) for v in e["phases"].values()), min(e["whole"])


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="", help="comma-separated (default: every preset)")
    parser.add_argument("--plans", default=",".join(PLANS).replace(",", ";"),
                        help="semicolon-separated plans")
    parser.add_argument("--phases", action="store_true",
                        help="also time dp=1 steps whole and phase by phase, alternating, in "
                             "this process (bench/step_gap.py)")
    parser.add_argument("--recalibrate", choices=("fast", "all"), default=None,
                        help="re-measure the calibration (fast: dispatch and host figures; all: "
                             "the rates too) right before each model's rows and simulate them "
                             "with it as well (bench/fresh_calibration.py); adds columns")
    parser.add_argument("--recalibrate-rounds", type=int, default=1,
                        help="rounds of each re-measured figure (calibrate_cpu's --rounds)")
    parser.add_argument("--sweeps", type=int, default=1,
                        help="measure the whole table this many times over; each row keeps "
                             "its fastest runs (not with --recalibrate)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.sweeps < 1 or (args.sweeps > 1 and args.recalibrate):
        parser.error("--sweeps takes a count >= 1, and more than 1 is not for --recalibrate")
    return args


Measured = tuple[float, float | None, float, float | None, list[float], list[float]]


def combined(loops: list[Measured]) -> Measured:
    """`closed_loop`'s results of several sweeps as one: the fastest of all their runs."""
    def least(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return min(known) if known else None

    best = min(m[0] for m in loops)
    return (best, least([m[1] for m in loops]), loops[-1][2], least([m[3] for m in loops]),
            [r for m in loops for r in m[4]], [s for m in loops for s in m[5]])


def _row(model: str, aliases: list[str], plan: str, args: argparse.Namespace,
         fresh: str | None, earlier: list[Measured] | None = None) -> dict[str, Any]:
    """One row: measured (with the `earlier` sweeps' runs of it), simulated (committed
    calibration; and with `fresh`, the system file of a calibration measured just before) and
    their errors."""
    from steal import cpu_times, steal_share

    start = cpu_times()
    now = closed_loop(model, plan, args.steps, args.repeats)
    stolen = steal_share(start, cpu_times())
    real, cpu, pred, main_cpu, runs, steady = combined([*(earlier or []), now])
    phases, inproc = phase_minima(model) if args.phases and plan == "dp=1" else (None, None)
    row = {"model": model, "aliases": aliases, "plan": plan, "measured_s": real,
           "measured_cpu_s": cpu, "simulated_s": pred, "error": (pred - real) / real,
           "error_cpu": (pred - cpu) / cpu if cpu else None, "phases_s": phases,
           "error_phases": (pred - phases) / phases if phases else None,
           "inprocess_s": inproc, "error_inprocess": (pred - inproc) / inproc if inproc else None,
           "measured_main_cpu_s": main_cpu,
           "error_main_cpu": (pred - main_cpu) / main_cpu if main_cpu else None,
           "main_cpu_runs_s": runs, "median_s": median(steady),
           "error_median": (pred - median(steady)) / median(steady), "steal": stolen}
    if fresh is not None:
        from fresh_calibration import simulated_with

        now = simulated_with(fresh, model, plan)
        row.update(simulated_fresh_s=now,
                   error_main_cpu_fresh=(now - main_cpu) / main_cpu if main_cpu else None)
    return row


def _line(row: dict[str, Any]) -> str:
    """The row as a markdown table line (the fresh-calibration columns when it has them)."""
    cpu, phases, main_cpu = row["measured_cpu_s"], row["phases_s"], row["measured_main_cpu_s"]
    vs_cpu = f"{cpu:.4f} | {row['error_cpu']:+.1%}" if cpu else "- | -"
    vs_phases = f"{phases:.4f} | {row['error_phases']:+.1%}" if phases else "- | -"
    vs_main = f"{main_cpu:.4f} | {row['error_main_cpu']:+.1%}" if main_cpu else "- | -"
    inproc = row.get("inprocess_s")
    vs_in = f"{inproc:.4f} | {row['error_inprocess']:+.1%}" if inproc else "- | -"
    text = (f"| {'/'.join(row['aliases'])} | {row['plan']} | {row['measured_s']:.4f} | "
            f"{row['simulated_s']:.4f} | {row['error']:+.1%} | {vs_cpu} | {vs_phases} | "
            f"{vs_main} | {vs_in} |")
    if "simulated_fresh_s" in row:
        runs = row["main_cpu_runs_s"]
        fresh = row["error_main_cpu_fresh"]
        text += (f" {row['simulated_fresh_s']:.4f} | "
                 + (f"{fresh:+.1%}" if fresh is not None else "-")
                 + f" | {min(runs):.4f}-{max(runs):.4f} ({max(runs) / min(runs) - 1:+.0%}) |")
    return text


def _header(args: argparse.Namespace) -> str:
    head = ("| model (small preset) | plan | measured s | simulated s | error | "
            "measured CPU s | error vs CPU | phase minima s | error vs phases | "
            "main-thread CPU s | error vs main thread | in-process step s | error vs it |")
    rule = "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    if args.recalibrate:
        head += (f" simulated, {args.recalibrate} calibration now s | error vs main thread |"
                 " main-thread CPU per run s (spread) |")
        rule += "---|---|---|"
    return f"{head}\n{rule}"


def _summary(rows: list[dict[str, Any]]) -> str:
    errors = [abs(r["error"]) for r in rows]
    summary = [f"vs the wall step (measured) mean |error| {sum(errors) / len(errors):.1%}, "
               f"max {max(errors):.1%}, {sum(e <= 0.15 for e in errors)} of {len(errors)} within "
               "15 %"]
    for key, label in (("error_cpu", "CPU"), ("error_main_cpu", "main-thread CPU"),
                       ("error_phases", "phase minima"),
                       ("error_inprocess", "in-process step"),
                       ("error_main_cpu_fresh", "main-thread CPU, calibration now")):
        vs = [abs(r[key]) for r in rows if r.get(key) is not None]
        if vs:
            summary.append(f"vs {label} {sum(vs) / len(vs):.1%} (max {max(vs):.1%}, "
                           f"{sum(v <= 0.15 for v in vs)} of {len(vs)} within 15 %)")
    spreads = [max(r["main_cpu_runs_s"]) / min(r["main_cpu_runs_s"]) - 1 for r in rows
               if len(r.get("main_cpu_runs_s", ())) > 1]
    if spreads:
        summary.append(f"main-thread CPU between runs: median spread {median(spreads):.0%}, "
                       f"max {max(spreads):.0%}")
    stolen = [r["steal"] for r in rows if r.get("steal") is not None]
    if stolen:
        summary.append(f"host steal during the last sweep's rows: median {median(stolen):.1%}, "
                       f"max {max(stolen):.1%}")
    return f"{'; '.join(summary)}; load average now {os.getloadavg()[0]:.2f}"


def main() -> None:
    args = _arguments()
    torch.set_num_threads(1)
    models = distinct_models()
    if args.models:
        wanted = args.models.split(",")
        models = [(m, a) for m, a in models if m in wanted]
    if not args.json:
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch "
              f"{torch.__version__}, load average {os.getloadavg()[0]:.2f}; measured = min over "
              f"{args.repeats} runs x {args.steps - 1} steps")
        print(f"\n{_header(args)}", flush=True)
    rows: list[dict[str, Any]] = []
    calibrations: list[tuple[str, float, dict[str, float]]] = []
    earlier: dict[tuple[str, str], list[Measured]] = {}
    for _ in range(args.sweeps - 1):
        for model, _aliases in models:
            for plan in filter(lambda p, m=model: supports(m, p), args.plans.split(";")):
                earlier.setdefault((model, plan), []).append(
                    closed_loop(model, plan, args.steps, args.repeats))
    for model, aliases in models:
        fresh = None
        if args.recalibrate:
            from fresh_calibration import fresh_system

            fresh, fields = fresh_system(args.recalibrate, args.recalibrate_rounds, model)
            calibrations.append((model, os.getloadavg()[0], fields))
        for plan in args.plans.split(";"):
            if supports(model, plan):
                rows.append(_row(model, aliases, plan, args, fresh, earlier.get((model, plan))))
                if not args.json:
                    print(_line(rows[-1]), flush=True)
    if args.json:
        print(json.dumps({"rows": rows, "calibrations": calibrations} if calibrations else rows,
                         indent=2))
    elif rows:
        print(f"\n{_summary(rows)}")
        if calibrations:
            print(_calibration_table(calibrations))


def _calibration_table(calibrations: list[tuple[str, float, dict[str, float]]]) -> str:
    """Per model, the re-measured figures against the committed calibration (ratio)."""
    from dojo.sim.costs import load_calibration

    committed = load_calibration("cpu")
    keys = list(calibrations[0][2])
    lines = ["\n| before model | load | " + " | ".join(keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for model, load, fields in calibrations:
        ratios = [fields[k] / getattr(committed, k) if getattr(committed, k) else float("nan")
                  for k in keys]
        lines.append(f"| {model} | {load:.1f} | " + " | ".join(f"{r:.2f}" for r in ratios)
                     + " |")
    return "\n".join(lines) + "\n(ratios to the committed sim/calibration/cpu.toml)"


if __name__ == "__main__":
    main()
