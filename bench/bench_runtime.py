"""Runtime benchmarks, each against PyTorch eager fp32 in the same run (docs/benchmarks.md).

    .venv/bin/python bench/bench_runtime.py [--steps 20] [--json]

1. Step-time overhead of the bf16 and cfp8 precision policies: the small gpt, one process,
   Trainer step time / eager fp32 step time (goals: at most 1.5x and 2.5x).
2. Start-up time of 4 ranks: launch -> every rank ready to take its first step (seconds),
   first launch (worker server start included) and a second one.
3. dp=2 throughput: samples/s of a dp=2 run vs one eager process on the same global batch.
Medians over steps after one warm-up step. On the shared 2-core CI box the numbers move by
tens of percent with load; compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

GPT = {"layers": 4, "hidden": 128, "heads": 4, "ffn": 512}


def _median_step(fn: Any, steps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def eager_step_s(job: Any, steps: int) -> float:
    from dojo.runtime import Batches
    from dojo.runtime.job import build_bundle

    bundle = build_bundle(job)
    opt = bundle.make_optimizer(bundle.model.parameters())
    inputs, targets = Batches(bundle, job.batch).get(0)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        bundle.loss_fn(bundle.model(*inputs), *targets).backward()
        opt.step()

    return _median_step(step, steps)


def policy_overhead(steps: int) -> dict[str, float]:
    from dojo.runtime import Batches, Job, Trainer, simulate_job
    from dojo.runtime.job import build_bundle

    base = Job(model="gpt", plan="dp=1,mb=8,precision=fp32", batch=8, seq=32, overrides=GPT)
    out = {"eager_fp32_s": eager_step_s(base, steps)}
    for precision in ("fp32", "bf16", "cfp8"):
        job = Job(**{**base.__dict__, "plan": f"dp=1,mb=8,precision={precision}"})
        bundle = build_bundle(job)
        trainer = Trainer(simulate_job(job).program, bundle,
                          data=Batches(bundle, job.batch, fixed=True))
        out[f"{precision}_s"] = _median_step(trainer.step, steps)
        out[f"{precision}_x_eager"] = out[f"{precision}_s"] / out["eager_fp32_s"]
    return out


def startup() -> dict[str, float]:
    from dojo.runtime import Job, launch, run_job, simulate_job
    from dojo.runtime.job import dumps_program

    job = Job(model="gpt", plan="dp=2,tp=2,precision=fp32", batch=4, seq=8,
              overrides={"layers": 4}, steps=0)
    program = dumps_program(simulate_job(job).program)
    out = {}
    for label in ("first_launch_s", "second_launch_s"):
        t = time.perf_counter()
        launch(run_job, 4, (job, program))
        out[label] = time.perf_counter() - t
    return out


def dp_throughput(steps: int) -> dict[str, float]:
    from dojo.runtime import Job, run_distributed

    job = Job(model="gpt", plan="dp=2,mb=8,precision=fp32", batch=16, seq=32, overrides=GPT,
              steps=steps + 1)
    eager = eager_step_s(Job(**{**job.__dict__, "plan": "dp=1,mb=16,precision=fp32"}), steps)
    _, results = run_distributed(job, timeout_s=120)
    dp = statistics.median(results[0]["step_s"][1:])
    return {"eager_samples_per_s": job.batch / eager, "dp2_samples_per_s": job.batch / dp,
            "speedup": eager / dp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    report = {"policy_overhead": policy_overhead(args.steps), "startup_4_ranks": startup(),
              "dp2_throughput": dp_throughput(args.steps)}
    if args.json:
        json.dump(report, fp=__import__("sys").stdout, indent=2)
    else:
        for section, values in report.items():
            print(section)
            for key, value in values.items():
                print(f"  {key:<22} {value:.4g}")


if __name__ == "__main__":
    main()
