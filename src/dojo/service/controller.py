"""The controller: applies the scheduler's decisions to the store.

One thread in the server. Each tick (`tick_s`): the server's own worker host (`agent.Agent`,
"local") reaps, heartbeats and claims; then the controller requeues the jobs of hosts whose
heartbeat is `STALE_S` old, completes cancellations of jobs no host holds, and runs one `schedule`
pass over the store's active jobs and the tiles they hold: a start places a job (running, its
rectangle, no host yet) for a host to claim; a preemption marks it preempting for its host to
stop. Every state change is one store transaction (compare-and-set), so a crash at any point
leaves a state that `recover` turns back into a consistent queue.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from dojo.service.agent import STALE_S, Agent, Limits, job_dir
from dojo.service.mesh import Machine, Rect
from dojo.service.scheduler import USAGE_HALF_LIFE_S, Pending, Queue, Running, schedule
from dojo.service.store import Job, Store

log = logging.getLogger("dojo.service")

__all__ = ["Controller", "Limits"]


@dataclass
class Controller:
    store: Store
    machine: Machine
    system: str
    data: Path
    limits: Limits = field(default_factory=Limits)
    tick_s: float = 0.25
    hold: bool = False  # accept and queue jobs but start none (maintenance, API load tests)
    local_workers: bool = True  # run a worker host in the server (else only `dojo worker`s)
    agent: Agent | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        if self.local_workers and self.agent is None:
            self.agent = Agent(self.store, self.data, self.system, "local", self.limits)

    def job_dir(self, tenant: str, job_id: str) -> Path:
        return job_dir(self.data, tenant, job_id)

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="dojo-controller", daemon=True)
        self._thread.start()

    def recover(self) -> None:
        """After a restart: the local host's workers died with the server, so its jobs go back
        to the queue and resume from their checkpoints. Jobs of other hosts keep running; jobs
        placed but not claimed stay placed."""
        if self.agent is not None:
            self.agent.recover()

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM: stop scheduling, ask every local worker to checkpoint and stop, requeue."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.agent is not None:
            self.agent.stop(grace_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick(time.time())
            except Exception:  # keep scheduling; the error is in the server log
                log.exception("controller tick failed")
            self._stop.wait(self.tick_s)

    # -- one tick -----------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        if self.agent is not None:
            self.agent.tick(now)
        if self.hold:
            return
        active = self.store.active()
        for job in active:
            if job.host is None and job.state == "cancelling":
                self.store.transition(job.tenant, job.id, ("cancelling",), "cancelled",
                                      finished_at=now, rect=None)
            elif job.host is not None and (job.heartbeat_at or 0.0) < now - STALE_S:
                self.store.transition(job.tenant, job.id, (job.state,), "queued",
                                      on_host=job.host, rect=None, host=None,
                                      reason=f"host {job.host} stopped answering: requeued, "
                                      "resumes from its last checkpoint")
        for job in active:
            if job.state == "queued" and job.tiles == 0:  # tiles "auto": a host sizes it first
                self.store.transition(job.tenant, job.id, ("queued",), "sizing", host=None)
        active = self.store.active()
        decisions = schedule(self._queue(active, now), self.machine, now)
        by_key = {f"{j.tenant}/{j.id}": j for j in active}
        for key in decisions.preempt:
            victim = by_key[key]
            if victim.host is None:  # placed but not claimed yet: simply unplace it
                self.store.transition(victim.tenant, victim.id, ("running",), "queued",
                                      on_host=None, rect=None, reason="preempted before "
                                      "it started")
            else:
                self.store.transition(victim.tenant, victim.id, ("running",), "preempting",
                                      on_host=victim.host)
        for start in decisions.starts:
            job = by_key[start.job]
            if start.rect is not None and self.store.transition(
                    job.tenant, job.id, ("queued",), "running", rect=start.rect.to_json(),
                    started_at=now, runs=job.runs + 1, host=None):
                log.info("placed %s on tiles %s", start.job, start.rect.to_json())
        if decisions.starts and self.agent is not None:
            self.agent.tick(now)  # claim at once what was just placed

    def _queue(self, active: list[Job], now: float) -> Queue:
        pending, running = [], []
        for j in active:
            key = f"{j.tenant}/{j.id}"
            if j.state == "queued" and j.tiles > 0:
                pending.append(Pending(key, j.tenant, j.tiles, j.limit_s, j.submitted_at,
                                       j.priority))
            elif j.rect is not None:
                cells = tuple(Rect(*j.rect).cells())
                running.append(Running(key, j.tenant, cells, j.started_at or now, j.limit_s,
                                       j.priority, preemptible=j.kind in ("train", "occupancy")))
        usage = self.store.used_by_tenant(now, USAGE_HALF_LIFE_S)
        return Queue(tuple(pending), tuple(running), usage, self.store.tenants())
