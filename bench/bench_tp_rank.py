"""A tensor-parallel rank's own cost in the CPU closed loop (docs/benchmarks.md, twelfth
round): what one rank's step takes when it waits for nobody, measured and modelled.

    .venv/bin/python bench/bench_tp_rank.py [--models gpt,llama] [--plan tp=2] [--ops]

Measured: every rank steps the runtime's own Trainer (`dojo.runtime.trainer`) with every
all-reduce a no-op (the ranks then run independently: their values are wrong, their work is
not); the fastest step's main-thread CPU per rank over `--rounds` x `--steps`, and the same
model's dp=1 step in this process. Modelled: the simulated step with the waits between ranks
(`lockstep_*`, `wait_resume_s`) and the collectives' transfers at zero; dp=1 as simulated.
`--ops`: torch.profiler's top-level ATen ops (no ATen op above them: what Python or
autograd's engine dispatches) of one micro-batch's forward and backward on rank 0 against
dp=1's, by name, the all-reduces no-ops. Run it on a quiet machine, or in a shell with
`echo -20 > /proc/self/autogroup` on a shared one.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import replace
from typing import Any
from unittest import mock

import torch

NO_WAITS = {"lockstep_wait_s": 0.0, "lockstep_jitter": 0.0,
            "wait_resume_s": 0.0, "collective_latency_s": 0.0}


def _trainer(model: str, plan: str) -> Any:
    from dojo.runtime import Job
    from dojo.runtime.job import build_bundle, simulate_job
    from dojo.runtime.trainer import Trainer

    job = Job(model=model, plan=f"{plan},precision=fp32", system="cpu")
    return Trainer(simulate_job(job).program, build_bundle(job))


def _top_ops(prof: Any) -> Counter[str]:
    """ATen ops of a profile with no ATen op among their parents, by name."""
    out: Counter[str] = Counter()
    for event in prof.events():
        parent, nested = event.cpu_parent, False
        while parent is not None and not nested:
            nested, parent = parent.name.startswith("aten::"), parent.cpu_parent
        if event.name.startswith("aten::") and not nested:
            out[event.name] += 1
    return out


def _ops(trainer: Any) -> dict[str, Counter[str]]:
    """Top-level ops of one micro-batch's forward and backward (after 3 warm-up ones)."""
    from torch.profiler import ProfilerActivity, profile

    micro_in, micro_tgt = trainer._micro_batches(*trainer.data.get(0))

    def forward() -> Any:
        return trainer.loss_fn(trainer.model(*micro_in[0]), *micro_tgt[0]) / len(micro_in)

    for _ in range(3):
        forward().backward()
    with profile(activities=[ProfilerActivity.CPU]) as fwd:
        loss = forward()
    with profile(activities=[ProfilerActivity.CPU]) as bwd:
        loss.backward()
    return {"forward": _top_ops(fwd), "backward": _top_ops(bwd)}


def _fastest_step(trainer: Any, rounds: int, steps: int) -> float:
    """Fastest main-thread CPU seconds of `Trainer.step`, the batch drawn before the clock."""
    trainer.step()
    best = float("inf")
    for _ in range(rounds * steps):
        batch = trainer.data.get(trainer.position)
        start = time.thread_time()
        trainer.step(batch)
        best = min(best, time.thread_time() - start)
    return best


def _rank(rank: int, world: int, model: str, plan: str, rounds: int, steps: int,
          ops: bool) -> tuple[float, dict[str, Counter[str]] | None]:
    """One rank (`dojo.runtime.launch`): (its fastest own step s, its op lists or None)."""
    import torch.distributed as dist

    trainer = _trainer(model, plan)
    dist.barrier()
    with mock.patch.object(dist, "all_reduce", lambda *a, **k: None):
        listed = _ops(trainer) if ops else None
        return _fastest_step(trainer, rounds, steps), listed


def modelled_own_step(model: str, plan: str) -> float:
    """The simulated step of `model` under `plan` with no waits and no transfers (s)."""
    import importlib

    from dojo.runtime import Job
    from dojo.runtime.job import simulate_job

    sim = importlib.import_module("dojo.sim.simulate")
    program = simulate_job(Job(model=model, plan=f"{plan},precision=fp32",
                               system="cpu")).program
    dev = sim.device_model(program)
    dev = replace(dev, calibration=replace(dev.calibration, **NO_WAITS))
    with mock.patch.object(sim, "device_model", lambda _p: dev), \
            mock.patch.object(sim, "collective", lambda *a, **k: 0.0):
        return float(sim.simulate(program).step_time_s)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="gpt,llama,moe,deepseek-v3")
    parser.add_argument("--plan", default="tp=2")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--ops", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from dojo.plan import parse_plan
    from dojo.runtime.job import simulate_job
    from dojo.runtime.launch import launch

    ranks = parse_plan(f"{args.plan},precision=fp32").devices
    print(f"| model | {args.plan} rank ms (each rank) | modelled, no waits | dp=1 ms | "
          "dp=1 simulated |\n|---|---|---|---|---|")
    for model in args.models.split(","):
        out = launch(_rank, ranks, (model, args.plan, args.rounds, args.steps, args.ops),
                     timeout_s=600)
        dp1 = _trainer(model, "dp=1")
        alone = _fastest_step(dp1, args.rounds, args.steps)
        from dojo.runtime import Job

        sim1 = simulate_job(Job(model=model, plan="dp=1,precision=fp32", system="cpu"))
        mine = [s for s, _ in out]
        own = modelled_own_step(model, args.plan)
        print(f"| {model} | {' / '.join(f'{s * 1e3:.2f}' for s in mine)} | {own * 1e3:.2f} "
              f"({own / (sum(mine) / len(mine)) - 1:+.1%}) | {alone * 1e3:.2f} | "
              f"{sim1.result.step_time_s * 1e3:.2f} "
              f"({sim1.result.step_time_s / alone - 1:+.1%}) |")
        if args.ops:
            base = _ops(dp1)
            for phase, listed in (out[0][1] or {}).items():
                diff = listed.copy()
                diff.subtract(base[phase])
                print(f"  {phase}: {sum(listed.values())} top-level ops against "
                      f"{sum(base[phase].values())} at dp=1; difference by name: "
                      f"{dict(c for c in diff.most_common() if c[1])}")


if __name__ == "__main__":
    main()
