"""Two worker hosts on this machine acting as two hosts: a server that runs no jobs itself and
two `dojo worker` processes sharing its PostgreSQL (claims with SELECT ... FOR UPDATE SKIP
LOCKED) and data folder. Jobs spread over both hosts and complete; a host killed with -9 has its
job requeued after its heartbeat goes stale and finished by the other host."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from dojo.client import Client

from .conftest import PG_URL, pg_reason
from .procs import SRC, Server, wait_for
from .test_durability import TRAIN, steps_of


@pytest.fixture()
def pg_schema_url() -> Iterator[str]:
    reason = pg_reason()
    if reason:
        print(f"\nskipped: {reason}")
        pytest.skip(reason)
    import sqlalchemy as sa

    schema = f"h_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine("postgresql+psycopg://" + PG_URL.split("://", 1)[1])
    with engine.begin() as c:
        c.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    yield PG_URL + ("&" if "?" in PG_URL else "?") + f"options=-csearch_path%3D{schema}"
    with engine.begin() as c:
        c.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


def host(data: Path, db: str, name: str) -> subprocess.Popen[bytes]:
    log = open(data / f"{name}.log", "ab")  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", "dojo.cli.main", "worker", "--data",
                             str(data), "--db", db, "--name", name, "--slots", "2"],
                            stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": str(SRC)})


@pytest.mark.slow
def test_two_hosts_share_the_jobs_and_survive_one_dying(tmp_path: Path,
                                                        pg_schema_url: str) -> None:
    from dojo.service.auth import new_token
    from dojo.service.server import open_store

    store = open_store(tmp_path, pg_schema_url)
    tid, token, digest = new_token()
    store.create_tenant("acme", 1000.0, tid, "admin", digest)
    server = Server(tmp_path, "--db", pg_schema_url, "--no-local-workers").start()
    hosts = {name: host(tmp_path, pg_schema_url, name) for name in ("h1", "h2")}
    try:
        c = Client(server.url, token)
        jobs = [c.submit({**TRAIN, "steps": 8, "min_step_s": 1.5}) for _ in range(3)]
        # Three 2-tile jobs fill V1; two slots per host: both hosts get work.
        wait_for(lambda: all(store.job("acme", j["id"]).host for j in jobs), 60,
                 what="every job claimed")
        owners = {j["id"]: store.job("acme", j["id"]).host for j in jobs}
        assert set(owners.values()) == {"h1", "h2"}
        victim_job = next(j for j, h in owners.items() if h == "h1")
        folder = tmp_path / "jobs" / "acme" / victim_job
        wait_for(lambda: len(steps_of(folder)) >= 2, 180, what="h1's job to train")
        hosts["h1"].kill()   # kill -9 of a whole host: its worker dies with it
        hosts["h1"].wait()
        for j in jobs:
            assert c.wait(j["id"], timeout_s=300)["state"] == "succeeded"
        final = store.job("acme", victim_job)
        assert final is not None and final.runs == 2
        runs = [ln["run"] for ln in steps_of(folder)]
        assert runs == sorted(runs) and set(runs) == {1, 2}
        claims = [a for a in store.audit_log("acme") if a["action"] == "job.claim"
                  and a["target"] == victim_job]
        assert [a["actor"] for a in reversed(claims)] == ["h1", "h2"]
    finally:
        for p in hosts.values():
            p.kill()
            p.wait()
        server.kill9()
        store.close()
