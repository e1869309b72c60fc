"""A training job as data (`Job`), the program it executes, and the per-rank entry point.

`Job` is what `dojo run`, tests and benchmarks hand to `launch`: every rank rebuilds the same
model from the zoo with the same seed (so all ranks start from the whole model's weights), then
simulates the plan to get the `Program` and executes that very object with a `Trainer`.
"""

from __future__ import annotations

import io
import pickle
import time
import types
from dataclasses import dataclass, field
from typing import Any

from dojo.errors import DojoError
from dojo.plan.plan import Plan, parse_plan

# Steps at the start of a run that are not timed as steady state: the first step allocates
# every activation and gradient buffer and creates the optimizer state (measured 1.5-2x a later
# step on a CPU).
WARMUP_STEPS = 1


@dataclass(frozen=True, kw_only=True)
class Job:
    """One run: model name and overrides (`small` merges the zoo's small preset first), plan
    text, global batch (samples), sequence length, steps, seed, the system simulated, and an
    optional checkpoint folder (`save_every` steps; `resume` loads it first). `die_at` makes the
    given rank exit abruptly before that step (a test hook for failure handling). `min_step_s`
    stretches each step to at least that many seconds (to watch a tiny model train; the
    recorded step times leave the wait out); with `metrics`, rank 0 appends one JSON line per
    step to that file: {"step", "loss", "steps", "run"} (`run`: the caller's run number)."""

    model: str
    plan: str = "dp=1,precision=fp32"
    batch: int = 4
    seq: int | None = None
    steps: int = 3
    seed: int = 0
    small: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)
    system: str = "h100-cluster"
    checkpoint: str | None = None
    save_every: int = 0
    resume: bool = False
    return_state: bool = False
    die_at: tuple[int, int] | None = None  # (rank, step)
    min_step_s: float = 0.0
    metrics: str | None = None
    run: int = 0

    def parsed_plan(self) -> Plan:
        return parse_plan(self.plan)

    def model_overrides(self) -> dict[str, Any]:
        """The small preset (when `small`) under the explicit overrides."""
        if not self.small or ":" in self.model:
            return dict(self.overrides)
        from dojo.models import MODELS

        return {**MODELS.get(self.model).small, **self.overrides}


def simulate_job(job: Job) -> Any:
    """`dojo.sim.session.simulate_model` for the job: the `Simulated` whose program runs."""
    from dojo.sim.session import simulate_model

    plan = job.parsed_plan()
    return simulate_model(job.model, job.model_overrides(), job.system, plan, job.batch,
                          seq=job.seq, devices=plan.devices)


def build_bundle(job: Job) -> Any:
    """The job's model bundle on CPU, initialised from `job.seed`."""
    from dojo.models import build

    return build(job.model, batch=job.batch, seq=job.seq, overrides=job.model_overrides(),
                 seed=job.seed)


def _proxy(data: dict[Any, Any]) -> types.MappingProxyType[Any, Any]:
    return types.MappingProxyType(data)


class _ProgramPickler(pickle.Pickler):
    """Pickles the frozen mappings (MappingProxyType) that system specs hold."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.MappingProxyType):
            return _proxy, (dict(obj),)
        return NotImplemented


def dumps_program(program: Any) -> bytes:
    """`program` as bytes, to hand the one simulated program to every rank."""
    buf = io.BytesIO()
    _ProgramPickler(buf).dump(program)
    return buf.getvalue()


def run_job(rank: int, world: int, job: Job, program: bytes | None = None) -> dict[str, Any]:
    """Entry point of one rank (for `launch`): build, train, report.

    `program` is the parent's simulated program (`dumps_program`), so all ranks execute the
    program that was simulated once; without it the rank simulates the job itself. The
    simulated step time comes from the parent's simulation then ("simulated_step_s" None).

    Returns {"rank", "losses" (per step), "simulated_step_s", "step_s" (wall seconds per step,
    the batch drawn before the clock starts, as a loader prefetches it), "step_cpu_s" (CPU
    seconds of this process per step, all its threads: the wall time of an idle core, which
    other jobs on a shared machine do not inflate; waits on other ranks are not in it, but
    gloo's tcp loop thread busy-polling for a receive this rank has not posted yet is),
    "step_thread_cpu_s" (CPU seconds of the thread that ran the step),
    "warmup_steps" (how many of the first steps `measured_step_s` leaves out), "threads"
    (intra-op threads this rank ran with), "start_s" (seconds from entry to the first step),
    "executed" (the last step's pipeline tasks, as `dojo.sim.pipeline.order` writes them)} and,
    with `return_state`, "params", "grads" (local names), "shards" (local name -> (source, dim,
    index list)) and under ZeRO "zero_grad" ((first flat index, averaged gradient slice)) and
    "zero_names" (the flat order).
    """
    import os

    import torch

    from dojo.runtime.checkpoint import load_checkpoint, save_checkpoint
    from dojo.runtime.trainer import Trainer

    t0 = time.perf_counter()
    simulated = None
    if program is None:
        sim = simulate_job(job)
        executable, simulated = sim.program, sim.result.step_time_s
    else:
        executable = pickle.loads(program)
    trainer = Trainer(executable, build_bundle(job), seed=job.seed)
    if trainer.program is not executable:  # the contract the runtime is built on
        raise DojoError("trainer does not execute the simulated program")
    if job.resume and job.checkpoint:
        load_checkpoint(trainer, job.checkpoint)
    start = time.perf_counter() - t0
    losses, times, cpu, main = [], [], [], []
    while trainer.position < job.steps:
        if job.die_at is not None and job.die_at == (rank, trainer.position):
            os._exit(17)  # abrupt death, as a crashed or killed rank: no cleanup, no message
        batch = trainer.data.get(trainer.position)
        t, c, m = time.perf_counter(), time.process_time(), time.thread_time()
        losses.append(trainer.step(batch))
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        main.append(time.thread_time() - m)
        time.sleep(max(0.0, job.min_step_s - times[-1]))
        if job.metrics and rank == 0:
            _metrics_line(job, trainer.position, float(losses[-1]))
        if job.checkpoint and job.save_every and trainer.position % job.save_every == 0:
            save_checkpoint(trainer, job.checkpoint)
    out: dict[str, Any] = {"rank": rank, "losses": losses, "step_s": times, "step_cpu_s": cpu,
                           "step_thread_cpu_s": main,
                           "start_s": start, "warmup_steps": WARMUP_STEPS,
                           "threads": torch.get_num_threads(),
                           "simulated_step_s": simulated, "executed": trainer.executed}
    if job.return_state:
        out["params"] = trainer.local_state()
        out["grads"] = trainer.local_grads()
        out["shards"] = {n: (s.source, s.dim, s.index.tolist()) for n, s in trainer.shards.items()}
        if trainer.zero is not None:
            out["zero_grad"] = trainer.zero.grad_slice()  # (first flat index, slice)
            out["zero_names"] = [n for n, _ in trainer.params]  # flat order
    return out


def _metrics_line(job: Job, step: int, loss: float) -> None:
    import json

    assert job.metrics is not None
    with open(job.metrics, "a") as f:
        f.write(json.dumps({"step": step, "loss": loss, "steps": job.steps, "run": job.run})
                + "\n")


def measured_step_s(result: dict[str, Any]) -> float | None:
    """Seconds per step of one rank's `run_job` result in steady state: the median of its step
    times after the warm-up steps (all of them when the run was no longer; None without steps)."""
    import statistics

    times = result["step_s"]
    steady = times[result.get("warmup_steps", 0):] or times
    return statistics.median(steady) if steady else None


def run_distributed(job: Job, timeout_s: float = 30.0, method: str = "forkserver"
                    ) -> tuple[Any, list[dict[str, Any]]]:
    """Simulate `job` here, then execute that program on plan.devices ranks (`launch`).
    Returns (Simulated, per-rank results of `run_job`)."""
    from dojo.runtime.launch import launch

    plan = check_job(job)
    sim = simulate_job(job)
    results = launch(run_job, plan.devices, (job, dumps_program(sim.program)),
                     timeout_s=timeout_s, method=method)
    return sim, results


def check_job(job: Job) -> Plan:
    """Parse and check the job's plan early (before any process starts)."""
    plan = job.parsed_plan()
    if job.steps < 0:
        raise DojoError(f"steps = {job.steps}: expected >= 0")
    return plan
