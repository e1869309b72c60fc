"""The worker: one job in one subprocess, `python -m dojo.service.worker JOBDIR`.

All tenant work happens here, never in the server: the controller starts this process with CPU,
memory and wall-time limits, and it dies with the server (PR_SET_PDEATHSIG). It holds an
exclusive lock on JOBDIR/lock for its whole life, so two workers never run one job at once, even
across a server crash. It reads JOBDIR/job.json, appends to log.txt and metrics.jsonl, writes
result.json (and report.html) on success, and exits:

    0   done            75  preempted or stopped (checkpoint saved; the job resumes later)
    2   the job's input is wrong (reason on the last line of log.txt)   other: crashed

Job kinds: `simulate` (one step on the job's tile partition), `plan` (the plan search on it),
`train` (the runtime trains the model here on CPU, one step at a time with checkpoints, while
step time, energy and cost on the partition come from the simulator), `occupancy` (the driving
job, `dojo train occupancy`, on clips synthesized for it) and `size` (tiles "auto").
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

PREEMPTED = 75
_stop: list[bool] = [False]


def main(argv: list[str]) -> int:
    folder = Path(argv[0])
    lock = open(folder / "lock", "a+")  # noqa: SIM115 -- held until the process exits
    fcntl.flock(lock, fcntl.LOCK_EX)
    (folder / "pid").write_text(str(os.getpid()))
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda *_: _stop.__setitem__(0, True))
    job = json.loads((folder / "job.json").read_text())
    log = open(folder / "log.txt", "a", buffering=1)  # noqa: SIM115
    sys.stdout = sys.stderr = log
    print(f"[worker] run {job['run']} of {job['kind']} job {job['id']} on {job['tiles']} "
          f"tiles {job['rect']} of {job['system']}", flush=True)
    from dojo.errors import DojoError

    try:
        result = KINDS[job["kind"]](job, folder)
    except DojoError as err:
        print(f"error: {err}", flush=True)
        return 2
    except Exception as err:  # a crash of tenant code or ours: the reason goes to the log
        traceback.print_exc()
        print(f"error: {type(err).__name__}: {err}", flush=True)
        return 1
    if result is None:
        print("[worker] stopped; checkpoint saved", flush=True)
        return PREEMPTED
    tmp = folder / "result.json.tmp"
    tmp.write_text(json.dumps(result, default=float))
    tmp.replace(folder / "result.json")
    print("[worker] done", flush=True)
    return 0


def partition(job: dict[str, Any]) -> Any:
    from dojo.hardware import load_system
    from dojo.service.mesh import Rect
    from dojo.service.specs import partition_system

    return partition_system(load_system(job["system"]), Rect(*job["rect"]))


def simulated(job: dict[str, Any], part: Any, batch: int | None = None) -> Any:
    """The job's model simulated on its partition (plan searched when `auto`)."""
    from dojo.compiler.mapping import device_count
    from dojo.plan import parse_plan
    from dojo.sim.session import simulate_model

    spec = job["spec"]
    batch = batch or spec.get("batch") or device_count(part)
    sets = spec.get("set", {})
    if spec.get("plan", "auto") == "auto":
        from dojo.sim.search import best_plan

        return best_plan(spec["model"], sets, part, batch, spec.get("seq")).best.simulated
    return simulate_model(spec["model"], sets, part, parse_plan(spec["plan"]), batch,
                          spec.get("seq"))


def _summary(sim: Any, tiles: int, steps: int = 1) -> dict[str, Any]:
    r = sim.result
    return {**r.to_json(), "plan": sim.program.plan.text(full=True), "system": sim.program.system
            .name, "steps": steps, "energy_j_total": r.energy_j * steps,
            "tile_hours": tiles * r.step_time_s * steps / 3600.0}


def run_simulate(job: dict[str, Any], folder: Path) -> dict[str, Any]:
    sim = simulated(job, partition(job))
    _report(sim, folder)
    return _summary(sim, job["tiles"])


def run_plan(job: dict[str, Any], folder: Path) -> dict[str, Any]:
    from dojo.compiler.mapping import device_count
    from dojo.sim.search import best_plan

    part, spec = partition(job), job["spec"]
    batch = spec.get("batch") or device_count(part)
    found = best_plan(spec["model"], spec.get("set", {}), part, batch, spec.get("seq"))
    _report(found.best.simulated, folder)
    return {"best": _summary(found.best.simulated, job["tiles"]),
            "candidates": [c.to_json() for c in found.candidates]}


def run_train(job: dict[str, Any], folder: Path) -> dict[str, Any] | None:
    """Train for real on CPU (dp=1, fp32), one step at a time; checkpoint every
    `checkpoint_every` steps and on a stop signal; resume from the checkpoint when present."""
    from dojo.runtime import Job
    from dojo.runtime.checkpoint import MANIFEST, load_checkpoint, save_checkpoint
    from dojo.runtime.job import build_bundle, simulate_job
    from dojo.runtime.trainer import Trainer

    if job.get("rendezvous"):  # a job that spans hosts: this host's ranks
        from dojo.service.multihost import run_train_hosts

        return run_train_hosts(job, folder)
    spec = job["spec"]
    steps, every = spec.get("steps", 20), spec.get("checkpoint_every", 5)
    local = Job(model=spec["model"], batch=spec.get("batch", 4), seq=spec.get("seq"),
                steps=steps, seed=spec.get("seed", 0), overrides=spec.get("set", {}))
    dojo_sim = simulated(job, partition(job))
    _report(dojo_sim, folder)
    trainer = Trainer(simulate_job(local).program, build_bundle(local), seed=local.seed)
    ckpt = folder / "checkpoint"
    if (ckpt / MANIFEST).is_file():
        load_checkpoint(trainer, ckpt)
        print(f"[worker] resumed from the checkpoint at step {trainer.position}", flush=True)
    metrics = open(folder / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115
    pace = float(spec.get("min_step_s", 0.0))
    loss = float("nan")
    while trainer.position < steps:
        t0 = time.perf_counter()
        loss = float(trainer.step(trainer.data.get(trainer.position)))
        time.sleep(max(0.0, pace - (time.perf_counter() - t0)))
        metrics.write(json.dumps({"step": trainer.position, "loss": loss, "steps": steps,
                                  "run": job["run"]}) + "\n")
        print(f"step {trainer.position}/{steps} loss {loss:.4f}", flush=True)
        if trainer.position % every == 0 or _stop[0]:
            save_checkpoint(trainer, ckpt)
        if _stop[0] and trainer.position < steps:
            return None
    out = _summary(dojo_sim, job["tiles"], steps)
    return {**out, "final_loss": loss, "local_steps": steps}


def run_size(job: dict[str, Any], folder: Path) -> dict[str, Any]:
    """tiles "auto": the fewest tiles on which some plan of the model fits its global batch
    (binary search over the tile counts that make rectangles; fitting grows with the tiles).
    Writes sizing.json; the job then queues for that many tiles."""
    from dojo.errors import DojoError
    from dojo.hardware import load_system
    from dojo.service.mesh import Rect, machine_of, shapes
    from dojo.service.specs import partition_system
    from dojo.sim.search import best_plan

    base = load_system(job["system"])
    m = machine_of(base)
    spec = job["spec"]
    sizes = [n for n in range(1, m.tiles + 1)
             if (hw := shapes(n, m.rows, m.cols)) and hw[0][0] * hw[0][1] == n]
    lo, hi, found, last = 0, len(sizes) - 1, None, ""
    while lo <= hi:
        mid = (lo + hi) // 2
        h, w = shapes(sizes[mid], m.rows, m.cols)[0]
        part = partition_system(base, Rect(0, 0, h, w))
        try:
            best = best_plan(spec["model"], spec.get("set", {}), part, spec["batch"],
                             spec.get("seq")).best
            ok = best.fits
            last = f"plan {best.plan.text()}, {best.step_time_s:.4g} s per step"
        except DojoError as err:
            ok, last = False, str(err)
        print(f"[worker] sizing: {sizes[mid]} tiles: {'fits' if ok else 'does not fit'} "
              f"({last})", flush=True)
        if ok:
            found, hi = (sizes[mid], last), mid - 1
        else:
            lo = mid + 1
    if found is None:
        raise DojoError(f"tiles = 'auto': {spec['model']} does not fit batch {spec['batch']} "
                        f"even on all {m.tiles} tiles ({last})")
    sized = {"tiles": found[0], "note": found[1]}
    (folder / "sizing.json").write_text(json.dumps(sized))
    return sized


class _Stopped(Exception):
    """Raised from the progress callback when the worker is asked to stop."""


def run_occupancy(job: dict[str, Any], folder: Path) -> dict[str, Any] | None:
    """`dojo train occupancy` as a job: on the tenant's uploaded dataset, or multi-camera clips
    synthesized into the job's folder (once); the occupancy network trained here with
    checkpoints every `checkpoint_every` steps (a stop resumes from the last one); the large
    preset simulated on the job's partition (`partition`)."""
    import shutil

    from dojo.train.options import TrainOptions
    from dojo.train.run import train_occupancy

    spec = job["spec"]
    out = folder / "run"
    steps = spec.get("steps", 20)
    clips = spec.get("clips", 8)
    uploaded = job.get("dataset_dir")
    opts = TrainOptions(out=str(out), data=uploaded or str(folder / "data"), synth=not uploaded,
                        system=job["system"], steps=steps, batch_size=spec.get("batch", 4),
                        train_clips=clips, val_clips=max(2, clips // 2),
                        eval_every=max(1, steps // 4),
                        checkpoint_every=spec.get("checkpoint_every", 5),
                        seed=spec.get("seed", 0), threads=1,
                        resume=(out / "checkpoint").is_dir())
    metrics = open(folder / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115

    def progress(p: Any) -> None:
        if p.phase == "train":
            metrics.write(json.dumps({"step": p.step, "loss": p.loss, "steps": p.steps,
                                      "run": job["run"]}) + "\n")
            print(f"step {p.step}/{p.steps} loss {p.loss:.4f}", flush=True)
        else:
            print(f"[{p.phase}] {p.message}", flush=True)
        if _stop[0]:
            raise _Stopped

    try:
        result = train_occupancy(opts, progress, partition(job))
    except _Stopped:
        return None
    if (out / "report.html").is_file():
        shutil.copyfile(out / "report.html", folder / "report.html")
    dojo = result.sim.dojo.result
    return {"val_iou": result.val_iou, "baseline_iou": result.history.baseline_iou,
            "final_loss": result.history.train_loss[-1], "local_steps": steps,
            "train_samples": result.train_samples,
            "system": result.sim.dojo.program.system.name,
            "step_time_s": dojo.step_time_s, "energy_j": dojo.energy_j,
            "plan": result.sim.dojo.program.plan.text(full=True)}


def _report(sim: Any, folder: Path) -> None:
    from dojo.report import simulation_report

    simulation_report(sim).write(str(folder / "report.html"))


KINDS = {"simulate": run_simulate, "plan": run_plan, "train": run_train, "size": run_size,
         "occupancy": run_occupancy}

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
