"""Training jobs that span worker hosts (spec `hosts: H`, `ranks: N`): torch.distributed's own
rendezvous across the hosts that claimed the job.

The host that claims the job (`Store.claim`) is its rendezvous host, slot 0: in the claim's
transaction it publishes an address (its `--addr`, a free port) and opens slots 1 .. H-1, which
other hosts claim (`Store.claim_slot`: SKIP LOCKED, compare-and-set, never two slots of one run
on one host). Each host runs a worker subprocess for its slot; the worker starts the host's
N / H ranks (global ranks slot x N/H onwards) with `dojo.runtime.hosts.launch_group`: gloo,
`init_process_group(init_method="tcp://ADDR:PORT")`, global rank 0 listening on slot 0's host.
Every rank waits on a barrier of the whole world before its host reports, so the job succeeds
(slot 0's worker exits 0) only when the ranks of all hosts have finished.

A host that dies (kill -9) takes its worker and ranks with it (PR_SET_PDEATHSIG); the other
hosts' ranks fail at their next collective ("connection closed") or at the rendezvous time-out
(`RENDEZVOUS_S`), so no half of a job keeps running: slot 0's worker then exits as crashed and
its host requeues the job as a whole (counted against `--max-attempts`), or, when slot 0's host
was the one that died, the controller requeues it once its heartbeat is stale. A slot host
whose job has moved on (requeued, cancelled, finished, a new run) kills its worker. A job that
spans hosts keeps no checkpoint: a retry or a preemption restarts it from step 0.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from typing import Any

from dojo.errors import DojoError

RENDEZVOUS_S = 60.0  # seconds for every host's ranks to arrive, and for each collective
MAX_HOSTS = 8


def free_port(addr: str) -> tuple[str, int]:
    """(addr, a TCP port free on it now): the rendezvous address slot 0 publishes."""
    with socket.socket() as s:
        s.bind((addr, 0))
        return addr, int(s.getsockname()[1])


class _Stopped(Exception):
    """SIGTERM or SIGUSR1 while the ranks run: stop them; the job is requeued."""


def run_train_hosts(job: dict[str, Any], folder: Path) -> dict[str, Any] | None:
    """A worker's share of a job that spans hosts: its slot's ranks, then (slot 0) the losses
    and the simulated cost of `steps` steps on the allocated partition. None when stopped."""
    from dojo.runtime import Job
    from dojo.runtime.hosts import launch_group
    from dojo.runtime.job import dumps_program, run_job, simulate_job
    from dojo.runtime.launch import RankError
    from dojo.service.worker import _report, _stop, _summary, partition, simulated

    spec, rv = job["spec"], job["rendezvous"]
    hosts, ranks, slot = int(rv["hosts"]), int(rv["ranks"]), int(rv["slot"])
    local = ranks // hosts
    steps = spec.get("steps", 20)
    rjob = Job(model=spec["model"], plan=f"dp={ranks},precision=fp32",
               batch=spec.get("batch", 4), seq=spec.get("seq"), steps=steps,
               seed=spec.get("seed", 0), overrides=spec.get("set", {}),
               min_step_s=float(spec.get("min_step_s", 0.0)), run=int(job["run"]),
               metrics=str(folder / "metrics.jsonl") if slot == 0 else None)
    program = dumps_program(simulate_job(rjob).program)  # the same program on every host
    dojo_sim = None
    if slot == 0:
        dojo_sim = simulated(job, partition(job))
        _report(dojo_sim, folder)
    url = f"tcp://{rv['addr']}:{rv['port']}"
    print(f"[worker] host {slot} of {hosts}: ranks {slot * local}..{(slot + 1) * local - 1} "
          f"of {ranks}, rendezvous {url}", flush=True)

    def stop(*_: Any) -> None:
        raise _Stopped

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, stop)
    if _stop[0]:  # asked to stop while it simulated
        return None
    t0 = time.perf_counter()
    try:
        results = launch_group(run_job, slot * local, local, ranks, url, (rjob, program),
                               timeout_s=RENDEZVOUS_S)
    except _Stopped:
        print("[worker] stopped: a job that spans hosts restarts from step 0", flush=True)
        return None
    except RankError as err:  # a crash, not bad input: the job is retried as a whole
        raise RuntimeError(str(err)) from None
    wall = time.perf_counter() - t0
    losses = [float(x) for x in results[0]["losses"]]
    if dojo_sim is None:
        return {"host": slot, "ranks": ranks, "losses": losses, "wall_s": wall}
    print(f"[worker] {ranks} ranks on {hosts} hosts: {steps} steps in {wall:.1f} s, final "
          f"loss {losses[-1] if losses else float('nan'):.4f}", flush=True)
    out = _summary(dojo_sim, job["tiles"], steps)
    return {**out, "final_loss": losses[-1] if losses else float("nan"), "local_steps": steps,
            "losses": losses, "hosts": hosts, "ranks": ranks, "wall_s": wall}


def check_spec(body: dict[str, Any], kind: Any) -> list[str]:
    """Admission of `hosts` and `ranks`: one line per bad field."""
    bad = []
    hosts = body.get("hosts", 1)
    ranks = body.get("ranks", hosts)
    whole = isinstance(hosts, int) and not isinstance(hosts, bool)
    if "hosts" in body and not (whole and 1 <= hosts <= MAX_HOSTS and kind == "train"):
        bad.append(f"hosts = {hosts!r}: expected a whole number of worker hosts from 1 to "
                   f"{MAX_HOSTS} (train jobs only)")
    elif "ranks" in body and not (isinstance(ranks, int) and not isinstance(ranks, bool)
                                  and kind == "train" and 1 <= ranks <= 8 * hosts
                                  and ranks % hosts == 0):
        bad.append(f"ranks = {ranks!r}: expected a multiple of hosts ({hosts}) up to "
                   f"{8 * hosts}: the data-parallel ranks, the same number on every host "
                   "(train jobs only)")
    return bad


def rendezvous(job: Any, slot: Any) -> dict[str, Any]:
    """The worker's `rendezvous` entry for `slot` (a `store.Slot`) of `job` (a `store.Job`)."""
    hosts = slot.hosts
    ranks = int(job.spec.get("ranks", hosts))
    if ranks % hosts:
        raise DojoError(f"ranks = {ranks}: expected a multiple of hosts ({hosts})")
    return {"addr": slot.addr, "port": slot.port, "slot": slot.slot, "hosts": hosts,
            "ranks": ranks}
