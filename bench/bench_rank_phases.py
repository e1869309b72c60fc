"""Where a rank's step goes, phase by phase: wall time, the main thread's CPU time and the
process's (gloo's threads included), on every rank of a plan of the CPU closed loop.

    .venv/bin/python bench/bench_rank_phases.py --model gpt --plan dp=2 [--steps 30]

Each rank runs the runtime's own Trainer step (`dojo.runtime.trainer`) split at its phases:
zero_grad, each micro-batch's forward and backward by its index (pp=1; from the second
micro-batch on, the backward also accumulates into the gradients; with pp the whole pipeline
is one phase), the gradient sync (`_sync_gradients`: pack, all-reduce, unpack), the optimizer step
and the loss all-reduce. Per phase and rank: the minimum and the median over the steps after
the first fifth (warm-up) of `time.perf_counter`, `time.thread_time` (the main thread: the
dispatch and the kernels at one intra-op thread) and `time.process_time` (all threads:
gloo's loop and worker threads too); the process's minor page faults per step (the first
steps' allocations); and each thread's CPU time and involuntary context switches per step
(/proc/self/task: gloo's tcp loop thread busy-polls while its peer's data waits for a
receive this rank has not posted yet, docs/benchmarks.md). Prints a
markdown table per rank (docs/benchmarks.md, "CPU closed loop").
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from typing import Any

import torch

Clock = tuple[float, float, float, int]


def _clocks() -> Clock:
    return (time.perf_counter(), time.thread_time(), time.process_time(),
            resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


def _thread_cpu() -> dict[str, tuple[float, int]]:
    """(CPU seconds, involuntary context switches) of each thread of this process by name
    (summed over same-named threads): the scheduler's run time in ns (/proc/.../schedstat),
    not the tick-sampled utime; a thread preempted while runnable (a busy loop) piles up
    involuntary switches where a blocked one does not."""
    out: dict[str, tuple[float, int]] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                run = int(f.read().split()[0]) / 1e9
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/self/task/{tid}/status") as f:
                switches = int(next(line.split()[1] for line in f
                                    if line.startswith("nonvoluntary_ctxt_switches")))
        except (OSError, StopIteration):  # the thread ended meanwhile
            continue
        old = out.get(name, (0.0, 0))
        out[name] = (old[0] + run, old[1] + switches)
    return out


def _step(trainer: Any, index: int, add: Any) -> None:
    """One Trainer.step, phase by phase, each phase's clocks handed to `add(name, a, b)`."""
    a = _clocks()
    micro_in, micro_tgt = trainer._micro_batches(*trainer.data.get(index))
    trainer.model.zero_grad(set_to_none=True)
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.model.train()
    b = _clocks()
    add("zero_grad", a, b)
    if trainer.plan.pp == 1:
        total = torch.zeros(())
        for i, (x, t) in enumerate(zip(micro_in, micro_tgt)):
            c = _clocks()
            loss = trainer.loss_fn(trainer.model(*x), *t) / len(micro_in)
            d = _clocks()
            loss.backward()
            e = _clocks()
            add(f"forward {i}", c, d)
            add(f"backward {i}", d, e)  # from the second on, AccumulateGrad adds too
            total = total + loss.detach()
    else:
        total = trainer._pipeline(micro_in, micro_tgt)
    c = _clocks()
    add("micro-batches", b, c)
    trainer._sync_gradients()
    d = _clocks()
    trainer.optimizer.step()
    e = _clocks()
    trainer._global_loss(total)
    f = _clocks()
    add("gradient sync", c, d)
    add("optimizer", d, e)
    add("loss all-reduce", e, f)
    add("step", a, f)


def rank_phases(rank: int, world: int, model: str, plan: str, steps: int) -> dict[str, Any]:
    """Entry point of one rank (`dojo.runtime.launch`): {"phases": name -> list of clock
    deltas, "threads": thread name -> CPU seconds over the run}."""
    from dojo.runtime import Job
    from dojo.runtime.job import build_bundle, simulate_job
    from dojo.runtime.trainer import Trainer

    job = Job(model=model, plan=f"{plan},precision=fp32", system="cpu")
    trainer = Trainer(simulate_job(job).program, build_bundle(job))
    phases: dict[str, list[tuple[float, ...]]] = {}

    def add(name: str, a: Clock, b: Clock) -> None:
        phases.setdefault(name, []).append(tuple(y - x for x, y in zip(a, b)))

    before = _thread_cpu()
    for index in range(steps):
        _step(trainer, index, add)
    after = _thread_cpu()
    threads = {k: (v[0] - before.get(k, (0.0, 0))[0], v[1] - before.get(k, (0.0, 0))[1])
               for k, v in after.items()}
    return {"phases": phases, "threads": threads, "steps": steps}


def table(result: dict[str, Any]) -> str:
    """Markdown rows: per phase, min and median (ms) of wall, main thread and process CPU
    after the first fifth of its samples, and page faults per step over the steps."""
    lines = ["| phase | n | wall min | main min | process min | wall med | main med | "
             "process med |", "|---|---|---|---|---|---|---|---|"]
    for name, samples in result["phases"].items():
        kept = samples[len(samples) // 5:]
        mins = [min(s[i] for s in kept) * 1e3 for i in range(3)]
        meds = [statistics.median(s[i] for s in kept) * 1e3 for i in range(3)]
        lines.append(f"| {name} | {len(kept)} | " + " | ".join(f"{v:.3f}" for v in mins + meds)
                     + " |")
    faults = [int(s[3]) for s in result["phases"]["step"]]
    steps = result["steps"]
    cpu = ", ".join(f"{k} {t / steps * 1e3:.2f} ms ({n / steps:.1f} preempted)" for k, (t, n) in
                    sorted(result["threads"].items(), key=lambda kv: -kv[1][0]) if t > 0)
    return ("\n".join(lines) + f"\n\npage faults per step: {faults}\nper step, CPU of each "
            f"thread (and times it was preempted while runnable): {cpu}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gpt")
    parser.add_argument("--plan", default="dp=2")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from dojo.plan import parse_plan
    from dojo.runtime.launch import launch

    ranks = parse_plan(f"{args.plan},precision=fp32").devices
    if ranks == 1:
        results = [rank_phases(0, 1, args.model, args.plan, args.steps)]
    else:
        results = launch(rank_phases, ranks, (args.model, args.plan, args.steps),
                         timeout_s=600)
    print(f"{args.model} {args.plan}: {args.steps} steps, load average "
          f"{os.getloadavg()[0]:.2f}")
    for rank, result in enumerate(results):
        print(f"\nrank {rank}\n\n{table(result)}")


if __name__ == "__main__":
    main()
