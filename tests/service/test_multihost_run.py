"""A training job that spans two worker hosts, with real processes: a server that runs no jobs
itself and two `dojo worker` processes on this machine acting as two hosts, sharing its
PostgreSQL and data folder. The job's 2 data-parallel ranks (one per host) meet through
torch.distributed's own rendezvous at the address the first host published; its losses equal
those of the same job on one host (`run_distributed`, dp=2, same seed: the runtime's losses are
deterministic). A kill -9 of one host while the ranks train gets the job retried as a whole
(the survivor's ranks fail, no rank of the first run stays alive) and completed on two hosts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from dojo.client import Client

from .procs import SRC, Server, wait_for
from .test_durability import steps_of
from .test_hosts import pg_schema_url

__all__ = ["pg_schema_url"]
JOB = {"kind": "train", "model": "mlp", "tiles": 2, "plan": "dp=50", "batch": 100, "seed": 7,
       "hosts": 2, "ranks": 2, "limit_s": 600}


def reference_losses(steps: int) -> list[float]:
    """The same job on one host: dp=2 ranks of `launch`, same model, batch and seed."""
    from dojo.runtime import Job
    from dojo.runtime.job import run_distributed

    _, results = run_distributed(Job(model="mlp", plan="dp=2,precision=fp32", batch=100,
                                     steps=steps, seed=7), timeout_s=60)
    return [float(x) for x in results[0]["losses"]]


def worker_host(data: Path, db: str, name: str) -> subprocess.Popen[bytes]:
    log = open(data / f"{name}.log", "ab")  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", "dojo.cli.main", "worker", "--data",
                             str(data), "--db", db, "--name", name, "--slots", "2"],
                            stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": str(SRC)})


@pytest.fixture()
def service(tmp_path: Path, pg_schema_url: str) -> Iterator[dict[str, Any]]:
    from dojo.service.auth import new_token
    from dojo.service.server import open_store

    store = open_store(tmp_path, pg_schema_url)
    tid, token, digest = new_token()
    store.create_tenant("acme", 1000.0, tid, "admin", digest)
    server = Server(tmp_path, "--db", pg_schema_url, "--no-local-workers").start()
    hosts = {name: worker_host(tmp_path, pg_schema_url, name) for name in ("h1", "h2")}
    try:
        yield {"store": store, "client": Client(server.url, token), "hosts": hosts,
               "data": tmp_path, "db": pg_schema_url}
    finally:
        for p in hosts.values():
            p.kill()
            p.wait()
        server.kill9()
        store.close()


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [], [pid]
    while frontier:
        kids = [c for c, p in parents.items() if p in frontier]
        out += kids
        frontier = kids
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
def test_two_hosts_train_one_job_like_one_host(service: dict[str, Any]) -> None:
    store, c = service["store"], service["client"]
    job = c.submit({**JOB, "steps": 6})
    done = c.wait(job["id"], timeout_s=240)
    assert done["state"] == "succeeded", done
    result = done["result"]
    assert (result["hosts"], result["ranks"]) == (2, 2)
    assert result["losses"] == reference_losses(6)
    assert [s["loss"] for s in steps_of(service["data"] / "jobs" / "acme" / job["id"])] == \
        result["losses"]
    final = store.job("acme", job["id"])
    assert final is not None and final.runs == 1 and final.attempts == 0
    assert sorted(h or "" for h in store.slot_hosts("acme", job["id"], 1)) == ["h1", "h2"]


@pytest.mark.slow
@pytest.mark.parametrize("dies", ["joining", "rendezvous"])
def test_a_host_killed_mid_job_gets_the_job_retried_whole(service: dict[str, Any],
                                                          dies: str) -> None:
    store, c, data = service["store"], service["client"], service["data"]
    steps = 24
    job = c.submit({**JOB, "steps": steps, "min_step_s": 0.5})
    folder = data / "jobs" / "acme" / job["id"]
    wait_for(lambda: len(steps_of(folder)) >= 3, 180, what="both hosts' ranks to train")
    h0, h1 = store.slot_hosts("acme", job["id"], 1)
    assert {h0, h1} == {"h1", "h2"}
    # kill -9 of the host that joined (slot 1) or of the rendezvous host (slot 0, where rank 0
    # and the TCP store listen): its worker and rank die with it.
    slot, dead = (1, h1) if dies == "joining" else (0, h0)
    worker = int((folder / ("host1" if slot else "") / "pid").read_text())
    ranks = children(worker)
    assert ranks, "the worker runs its host's rank in a child process"
    victim = service["hosts"][dead]
    victim.kill()
    victim.wait()
    wait_for(lambda: not any(alive(p) for p in [worker, *ranks]), 30,
             what="the killed host's worker and ranks to die with it")
    service["hosts"]["h3"] = worker_host(data, service["db"], "h3")  # a replacement host
    done = c.wait(job["id"], timeout_s=300)
    assert done["state"] == "succeeded", done
    final = store.job("acme", job["id"])
    assert final is not None and final.runs == 2
    run2 = store.slot_hosts("acme", job["id"], 2)
    assert len(set(run2)) == 2 and dead not in run2
    # The retry ran the whole job again from step 0 on two hosts: the same losses.
    assert done["result"]["losses"] == reference_losses(steps)
    runs = [m["run"] for m in steps_of(folder)]
    assert runs == sorted(runs) and runs.count(2) == steps and 3 <= runs.count(1) < steps
    # Run 1 ended in the surviving host's worker: its ranks failed at once (the peer closed
    # the connection). The rendezvous host requeues the job itself (an attempt counted
    # against --max-attempts); a dead rendezvous host's job is requeued by the controller once
    # its heartbeat is stale, as any job of a dead host.
    survivor_log = folder / ("" if slot else "host1") / "log.txt"
    assert "error: RuntimeError: rank" in survivor_log.read_text()
    audit = json.dumps(store.audit_log("acme"))
    if dies == "joining":
        assert final.attempts == 1 and "worker died" in audit
    else:
        assert final.attempts == 0 and f"host {dead} stopped answering" in audit
