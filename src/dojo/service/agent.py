"""A worker host: claims placed jobs from the store and runs each in a worker subprocess.

The server runs one agent itself (host "local"); more hosts join by running `dojo worker --db
URL --data DIR --name H` against the same PostgreSQL and a data folder they share. Each tick the
agent reaps finished workers (one transaction per outcome), stamps a heartbeat on the jobs it
holds, follows what the controller asked of them (preempting: SIGUSR1, the worker checkpoints and
stops; cancelling: SIGKILL), kills a worker past its job's wall-time limit, and claims new jobs
(`Store.claim`: SELECT ... FOR UPDATE SKIP LOCKED, compare-and-set on the claim). A host that stops
answering has its jobs requeued by the controller once its heartbeat is `STALE_S` old.
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

from dojo.service.multihost import free_port, rendezvous
from dojo.service.store import Job, Slot, Store

log = logging.getLogger("dojo.service")
PREEMPTED = 75  # the worker's exit status when it stopped after saving a checkpoint
STALE_S = 15.0  # seconds without a heartbeat after which a host's jobs are requeued


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


def job_dir(data: Path, tenant: str, job_id: str) -> Path:
    return data / "jobs" / tenant / job_id


@dataclass
class Agent:
    store: Store
    data: Path
    system: str
    host: str = "local"
    limits: Limits = field(default_factory=Limits)
    max_workers: int = 64
    addr: str = "127.0.0.1"  # where ranks of jobs that span hosts reach this host
    workers: dict[tuple[str, str], _Worker] = field(default_factory=dict)
    slot_workers: dict[tuple[str, str], _Worker] = field(default_factory=dict)  # hosts 1..H-1

    def recover(self) -> None:
        """After this host restarted, none of its old workers is alive (they die with it):
        its jobs go back to the queue and resume from their checkpoints."""
        for job in self.store.host_jobs(self.host):
            if job.state == "cancelling":
                self.store.transition(job.tenant, job.id, ("cancelling",), "cancelled",
                                      finished_at=time.time(), rect=None, host=None)
            else:
                self.store.transition(job.tenant, job.id, (job.state,), "queued", rect=None,
                                      host=None, reason=f"host {self.host} restarted: "
                                      "requeued, resumes from its last checkpoint")

    def tick(self, now: float) -> None:
        self.reap(now)
        self.store.heartbeat(self.host, now)
        for job in self.store.host_jobs(self.host):
            w = self.workers.get((job.tenant, job.id))
            if w is None:
                continue
            if job.state == "cancelling":
                _signal(w.proc, signal.SIGKILL)
            elif job.state == "preempting" and not w.stopping:
                w.stopping = True
                _signal(w.proc, signal.SIGUSR1)
            elif now - w.started > job.limit_s:
                _signal(w.proc, signal.SIGKILL)
                w.proc.wait()
                self._finish(w, now, "failed",
                             reason=f"wall-time limit of {job.limit_s:g} s reached")
        self._tend_slots()
        while len(self.workers) + len(self.slot_workers) < self.max_workers:
            slot = self.store.claim_slot(self.host, now)  # first complete jobs begun elsewhere
            if slot is not None:
                spans = self.store.job(slot.tenant, slot.job_id)
                if spans is not None:
                    self._launch(spans, now, slot)
                continue
            claimed = self.store.claim(self.host, now, lambda: free_port(self.addr))
            if claimed is None:
                break
            self._launch(claimed, now)

    def _tend_slots(self) -> None:
        """Workers of this host's slots in jobs that span hosts: forget the finished ones, kill
        those whose job moved on (requeued, stopped, ended: a new run needs new slots)."""
        for key, w in list(self.slot_workers.items()):
            job = self.store.job(*key)
            live = job is not None and job.state == "running" and job.runs == w.job.runs
            if w.proc.poll() is None and live:
                continue
            if w.proc.poll() is None:
                _signal(w.proc, signal.SIGKILL)
                w.proc.wait()
            self.slot_workers.pop(key)
            log.info("%s: slot of %s/%s (run %d) ended: exit %s", self.host, key[0], key[1],
                     w.job.runs, w.proc.returncode)

    def stop(self, grace_s: float = 20.0) -> None:
        """Ask every worker to checkpoint and stop; requeue their jobs."""
        for w in self.slot_workers.values():
            _signal(w.proc, signal.SIGKILL)
        for w in self.workers.values():
            _signal(w.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.workers and time.monotonic() < deadline:
            self.reap(time.time(), shutting_down=True)
            time.sleep(0.1)
        for w in list(self.workers.values()):
            _signal(w.proc, signal.SIGKILL)
            w.proc.wait()
        self.reap(time.time(), shutting_down=True)

    def _launch(self, job: Job, now: float, slot: Slot | None = None) -> None:
        """Start the job's worker; with `slot` (k > 0), this host's part of a job that spans
        hosts, in the job folder's `hostK`."""
        folder = job_dir(self.data, job.tenant, job.id)
        if slot is not None:
            folder = folder / f"host{slot.slot}"
        else:
            slots = self.store.slots_of(job.tenant, job.id, job.runs)
            slot = slots[0] if slots and job.state == "running" else None
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "result.json").unlink(missing_ok=True)
        kind = "size" if job.state == "sizing" else job.kind
        spec = {"id": job.id, "kind": kind, "spec": job.spec, "tiles": job.tiles,
                "rect": job.rect, "system": self.system, "run": job.runs, "host": self.host}
        if slot is not None:
            spec["rendezvous"] = rendezvous(job, slot)
        if job.spec.get("dataset"):
            spec["dataset_dir"] = str(self.data / "datasets" / job.tenant / job.spec["dataset"])
        (folder / "job.json").write_text(json.dumps(spec))
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOJO_TOKEN")}
        env["OMP_NUM_THREADS"] = "1"
        limits = self.limits
        proc = subprocess.Popen(
            [sys.executable, "-m", "dojo.service.worker", str(folder)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=env, cwd=folder, start_new_session=True,
            preexec_fn=lambda: _sandbox(limits))
        held = self.slot_workers if slot is not None and slot.slot > 0 else self.workers
        held[(job.tenant, job.id)] = _Worker(proc, job, now)
        log.info("%s: started %s/%s (run %d) on tiles %s", self.host, job.tenant, job.id,
                 job.runs, job.rect)

    def reap(self, now: float, shutting_down: bool = False) -> None:
        for w in list(self.workers.values()):
            rc = w.proc.poll()
            if rc is None:
                continue
            job = self.store.job(w.job.tenant, w.job.id)
            state = job.state if job else "gone"
            if state == "cancelling":
                self._finish(w, now, "cancelled", reason="cancelled")
            elif rc == 0 and state == "sizing":
                self._sized(w, now)
            elif rc == 0:
                path = job_dir(self.data, w.job.tenant, w.job.id) / "result.json"
                result = json.loads(path.read_text()) if path.is_file() else None
                self._finish(w, now, "succeeded", result=result, progress=1.0)
            elif rc == PREEMPTED or (w.stopping and rc < 0) or shutting_down:
                why = "stopped by its host" if shutting_down else "preempted"
                self._finish(w, now, "queued", reason=f"{why}: resumes from its checkpoint")
            else:
                self._failed(w, now, rc, job)

    def _sized(self, w: _Worker, now: float) -> None:
        """The planner chose the tiles: queue the job for them (or fail it past its quota)."""
        self.workers.pop((w.job.tenant, w.job.id), None)
        path = job_dir(self.data, w.job.tenant, w.job.id) / "sizing.json"
        sized = json.loads(path.read_text())
        tiles = int(sized["tiles"])
        why = f"sized by the planner: {tiles} tiles ({sized['note']})"
        quota = (self.store.tenant(w.job.tenant) or {}).get("quota_tile_hours", 0.0) * 3600
        use = self.store.usage(w.job.tenant)
        extra = (tiles - 1) * w.job.limit_s  # admission committed one tile
        if use["used_tile_s"] + use["committed_tile_s"] + extra > quota:
            self.store.transition(w.job.tenant, w.job.id, ("sizing",), "failed",
                                  actor=self.host, on_host=self.host, host=None,
                                  finished_at=now, reason=f"{why}: past the tile-hour quota")
            return
        self.store.transition(w.job.tenant, w.job.id, ("sizing",), "queued", actor=self.host,
                              on_host=self.host, host=None, tiles=tiles, reason=why)

    def _failed(self, w: _Worker, now: float, rc: int, job: Job | None) -> None:
        why = _last_error(job_dir(self.data, w.job.tenant, w.job.id) / "log.txt", rc)
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
        held = ("running", "preempting", "cancelling", "sizing")
        self.store.transition(job.tenant, job.id, held, state, actor=self.host,
                              on_host=self.host, rect=None, host=None, used_tile_s=used,
                              **values)


def serve_host(store: Store, data: Path, system: str, host: str, limits: Limits,
               slots: int = 1, tick_s: float = 0.5, stop: threading.Event | None = None,
               addr: str = "127.0.0.1") -> None:
    """`dojo worker`: run an agent with `slots` jobs at a time until SIGTERM / Ctrl-C (or
    `stop`), then stop it cleanly."""
    agent = Agent(store, data, system, host, limits, max_workers=slots, addr=addr)
    agent.recover()
    stop = stop or threading.Event()
    with contextlib.suppress(ValueError):  # not the main thread: the caller stops us
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set():
            try:
                agent.tick(time.time())
            except Exception:  # keep serving; the error is in the log
                log.exception("agent tick failed")
            stop.wait(tick_s)
    except KeyboardInterrupt:
        pass
    finally:
        agent.stop()


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)


def _sandbox(limits: Limits) -> None:
    """In the child before exec: die with the host process, and cap CPU time and memory."""
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
