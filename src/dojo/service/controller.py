"""The controller: applies the scheduler's decisions to the store and to worker processes.

One thread in the server. Each tick (`tick_s`): reap finished workers, enforce cancellations and
wall-time limits, then one `schedule` pass over the store's active jobs and the tiles they hold,
and apply its starts and preemptions. Every job state change is one store transaction
(compare-and-set), done before the matching process action on start and after it on exit, so a
crash at any point leaves a state that `recover` turns back into a consistent queue: jobs marked
running whose worker died with the server are queued again and resume from their checkpoint.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dojo.service.mesh import Machine, Rect
from dojo.service.scheduler import USAGE_HALF_LIFE_S, Pending, Queue, Running, schedule
from dojo.service.store import Job, Store

log = logging.getLogger("dojo.service")
PREEMPTED = 75  # the worker's exit status when it stopped after saving a checkpoint


@dataclass(frozen=True)
class Limits:
    """Per-worker limits: CPU seconds, address space (bytes); wall time is each job's limit_s."""

    cpu_s: int = 3600
    memory_bytes: int = 8 * 2**30
    max_attempts: int = 3


@dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    job: Job
    started: float
    stopping: bool = False


@dataclass
class Controller:
    store: Store
    machine: Machine
    system: str
    data: Path
    limits: Limits = field(default_factory=Limits)
    tick_s: float = 0.25
    hold: bool = False  # accept and queue jobs but start none (maintenance, API load tests)
    workers: dict[tuple[str, str], _Worker] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def job_dir(self, tenant: str, job_id: str) -> Path:
        return self.data / "jobs" / tenant / job_id

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="dojo-controller", daemon=True)
        self._thread.start()

    def recover(self) -> None:
        """After a restart: no worker of ours is alive (they die with the server), so running
        jobs go back to the queue and resume from their checkpoints; cancellations complete."""
        for job in self.store.active():
            if job.state in ("running", "preempting"):
                self.store.transition(job.tenant, job.id, (job.state,), "queued", rect=None,
                                      reason="server restarted: requeued, resumes from its "
                                      "last checkpoint")
            elif job.state == "cancelling":
                self.store.transition(job.tenant, job.id, ("cancelling",), "cancelled",
                                      finished_at=time.time(), rect=None)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM: stop scheduling, ask every worker to checkpoint and stop, requeue them."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for w in self.workers.values():
            _signal(w.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.workers and time.monotonic() < deadline:
            self._reap(time.time(), shutting_down=True)
            time.sleep(0.1)
        for w in list(self.workers.values()):
            _signal(w.proc, signal.SIGKILL)
            w.proc.wait()
        self._reap(time.time(), shutting_down=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick(time.time())
            except Exception:  # keep scheduling; the error is in the server log
                log.exception("controller tick failed")
            self._stop.wait(self.tick_s)

    # -- one tick -----------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        self._reap(now)
        if self.hold:
            return
        active = self.store.active()
        for job in active:
            w = self.workers.get((job.tenant, job.id))
            if job.state == "cancelling":
                if w is None:
                    self.store.transition(job.tenant, job.id, ("cancelling",), "cancelled",
                                          finished_at=now, rect=None)
                else:
                    _signal(w.proc, signal.SIGKILL)
            elif w is not None and now - w.started > job.limit_s:
                _signal(w.proc, signal.SIGKILL)
                self._finish(w, now, "failed", reason=f"wall-time limit of {job.limit_s:g} s "
                             "reached")
        decisions = schedule(self._queue(active, now), self.machine, now)
        for key in decisions.preempt:
            tenant, job_id = key.split("/", 1)
            w = self.workers.get((tenant, job_id))
            if w is not None and self.store.transition(tenant, job_id, ("running",),
                                                       "preempting"):
                w.stopping = True
                _signal(w.proc, signal.SIGUSR1)
        by_key = {f"{j.tenant}/{j.id}": j for j in active}
        for start in decisions.starts:
            job = by_key[start.job]
            if start.rect is None or not self.store.transition(
                    job.tenant, job.id, ("queued",), "running", rect=start.rect.to_json(),
                    started_at=now, runs=job.runs + 1):
                continue
            self._launch(job, start.rect, now)

    def _queue(self, active: list[Job], now: float) -> Queue:
        pending, running = [], []
        for j in active:
            key = f"{j.tenant}/{j.id}"
            if j.state == "queued":
                pending.append(Pending(key, j.tenant, j.tiles, j.limit_s, j.submitted_at,
                                       j.priority))
            elif j.rect is not None:
                cells = tuple(Rect(*j.rect).cells())
                running.append(Running(key, j.tenant, cells, j.started_at or now, j.limit_s,
                                       j.priority, preemptible=j.kind == "train"))
        usage = self.store.used_by_tenant(now, USAGE_HALF_LIFE_S)
        return Queue(tuple(pending), tuple(running), usage, self.store.tenants())

    def _launch(self, job: Job, rect: Rect, now: float) -> None:
        folder = self.job_dir(job.tenant, job.id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "result.json").unlink(missing_ok=True)
        spec = {"id": job.id, "kind": job.kind, "spec": job.spec, "tiles": job.tiles,
                "rect": rect.to_json(), "system": self.system, "run": job.runs + 1}
        (folder / "job.json").write_text(json.dumps(spec))
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOJO_TOKEN")}
        env["OMP_NUM_THREADS"] = "1"
        limits = self.limits
        proc = subprocess.Popen(
            [sys.executable, "-m", "dojo.service.worker", str(folder)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=env, cwd=folder, start_new_session=True,
            preexec_fn=lambda: _sandbox(limits))
        self.workers[(job.tenant, job.id)] = _Worker(proc, job, now)
        log.info("started %s/%s (run %d) on tiles %s", job.tenant, job.id, job.runs + 1,
                 rect.to_json())

    def _reap(self, now: float, shutting_down: bool = False) -> None:
        for w in list(self.workers.values()):
            rc = w.proc.poll()
            if rc is None:
                continue
            job = self.store.job(w.job.tenant, w.job.id)
            state = job.state if job else "gone"
            if state == "cancelling":
                self._finish(w, now, "cancelled", reason="cancelled")
            elif rc == 0:
                path = self.job_dir(w.job.tenant, w.job.id) / "result.json"
                result = json.loads(path.read_text()) if path.is_file() else None
                self._finish(w, now, "succeeded", result=result, progress=1.0)
            elif rc == PREEMPTED or (w.stopping and rc < 0) or shutting_down:
                why = "stopped by the server" if shutting_down else "preempted"
                self._finish(w, now, "queued", reason=f"{why}: resumes from its checkpoint")
            else:
                self._failed(w, now, rc, job)

    def _failed(self, w: _Worker, now: float, rc: int, job: Job | None) -> None:
        why = _last_error(self.job_dir(w.job.tenant, w.job.id) / "log.txt", rc)
        attempts = (job.attempts if job else 0) + 1
        if rc == 2 or attempts >= self.limits.max_attempts:
            self._finish(w, now, "failed", reason=f"{why} (attempt {attempts})",
                         attempts=attempts)
        else:
            self._finish(w, now, "queued", reason=f"worker died: {why}; retry {attempts} of "
                         f"{self.limits.max_attempts - 1}", attempts=attempts)

    def _finish(self, w: _Worker, now: float, state: str, **values: Any) -> None:
        """One transaction: the run's tile-seconds added, the tiles released, the new state."""
        self.workers.pop((w.job.tenant, w.job.id), None)
        job = self.store.job(w.job.tenant, w.job.id)
        if job is None:
            return
        used = job.used_tile_s + job.tiles * max(0.0, now - w.started)
        if state != "queued":
            values["finished_at"] = now
        self.store.transition(job.tenant, job.id, ("running", "preempting", "cancelling"),
                              state, rect=None, used_tile_s=used, **values)


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)


def _sandbox(limits: Limits) -> None:
    """In the child before exec: die with the server, and cap CPU time and memory."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 5))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))


def _last_error(path: Path, rc: int) -> str:
    """The worker's last `error:` line, or how it ended."""
    try:
        lines = path.read_text(errors="replace").splitlines()[-50:]
    except OSError:
        lines = []
    errors = [ln for ln in lines if ln.startswith("error: ")]
    if errors:
        return errors[-1].removeprefix("error: ")[:300]
    if rc < 0:
        return f"killed by signal {signal.Signals(-rc).name}"
    return f"exit status {rc}"
