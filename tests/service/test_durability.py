"""Durability with real processes on loopback: kill -9 of the server while a job trains, then a
restart (nothing lost, nothing run twice at once, resumed from the checkpoint, idempotent
resubmission); a worker killed twice (retried, then failed with the reason); SIGTERM (clean exit,
job requeued). Plus a fast in-process check of restart recovery."""

from __future__ import annotations

import fcntl
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from dojo.client import Client, ServiceError

from .procs import Server, make_tenant, wait_for

TRAIN = {"kind": "train", "model": "mlp", "tiles": 2, "plan": "dp=50", "batch": 100,
         "steps": 14, "checkpoint_every": 2, "min_step_s": 1.0, "limit_s": 900}


def lock_is_free(folder: Path) -> bool:
    """True when no worker holds the job's lock (a worker holds it for its whole life)."""
    with open(folder / "lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def steps_of(folder: Path) -> list[dict[str, Any]]:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_kill9_restart_loses_nothing_and_resumes(tmp_path: Path) -> None:
    token = make_tenant(tmp_path, "acme")
    server = Server(tmp_path).start()
    try:
        c = Client(server.url, token)
        job = c.submit(TRAIN, idempotency_key="train-1")
        queued = c.submit({"kind": "simulate", "model": "mlp", "tiles": 6, "plan": "dp=150",
                           "batch": 150})
        folder = tmp_path / "jobs" / "acme" / job["id"]
        wait_for(lambda: len(steps_of(folder)) >= 5, 180, what="5 training steps")
        server.kill9()
        # The worker dies with the server: its lock comes free.
        wait_for(lambda: lock_is_free(folder), 10, 0.2, what="the worker to die")
        before = len(steps_of(folder))
        server.start()
        again = c.submit(TRAIN, idempotency_key="train-1")   # the same job, not a new one
        assert again["id"] == job["id"]
        done = c.wait(job["id"], timeout_s=300)
        assert done["state"] == "succeeded", done
        assert c.wait(queued["id"], timeout_s=300)["state"] == "succeeded"
        assert sorted(j["id"] for j in c.jobs()) == sorted([job["id"], queued["id"]])
        lines = steps_of(folder)
        runs = [ln["run"] for ln in lines]
        assert runs == sorted(runs) and set(runs) == {1, 2} and done["runs"] == 2
        first_of_2 = next(ln["step"] for ln in lines if ln["run"] == 2)
        # Resumed from the last checkpoint (every 2 steps), not from step 1.
        assert first_of_2 == 2 * ((before) // 2) + 1 and first_of_2 > 1
        assert [ln["step"] for ln in lines if ln["run"] == 2] == list(range(first_of_2, 15))
        assert done["result"]["local_steps"] == 14 and done["result"]["step_time_s"] > 0
    finally:
        server.kill9()


@pytest.mark.slow
def test_worker_death_retries_then_fails_and_sigterm_is_clean(tmp_path: Path) -> None:
    token = make_tenant(tmp_path, "acme")
    server = Server(tmp_path, "--max-attempts", "2").start()
    try:
        c = Client(server.url, token)
        job = c.submit({**TRAIN, "steps": 100})
        folder = tmp_path / "jobs" / "acme" / job["id"]
        for attempt in (1, 2):
            wait_for(lambda n=attempt: len({ln["run"] for ln in steps_of(folder)}) >= n
                     and (folder / "pid").is_file(), 180, what=f"run {attempt} to train")
            os.kill(int((folder / "pid").read_text()), signal.SIGKILL)
            (folder / "pid").unlink()
            if attempt == 1:
                wait_for(lambda: c.job(job["id"])["runs"] == 2, 60, what="the retry")
        failed = c.wait(job["id"], timeout_s=60)
        assert failed["state"] == "failed" and failed["attempts"] == 2
        assert "SIGKILL" in failed["reason"] and "attempt 2" in failed["reason"]
        # SIGTERM while a job trains: exit 0, the job requeued to resume later.
        other = c.submit({**TRAIN, "steps": 100})
        wait_for(lambda: steps_of(tmp_path / "jobs" / "acme" / other["id"]), 180,
                 what="the second job to train")
        assert server.stop() == 0
        server.proc = None
        token_store = Server(tmp_path)  # read the store directly: no server running
        from dojo.service.server import open_store

        store = open_store(token_store.data, None)
        row = store.job("acme", other["id"])
        store.close()
        assert row is not None and row.state == "queued" and "stopped" in row.reason
    finally:
        server.kill9()
    with pytest.raises(ServiceError):
        Client(server.url, token, timeout_s=2).jobs()


def test_restart_recovery_requeues_running_jobs(tmp_path: Path) -> None:
    from dojo.service.server import Settings, build

    svc = build(Settings(data=tmp_path))
    svc.store.create_tenant("acme", 10.0, "t", "admin", "h")
    fields = {"kind": "train", "spec": {"model": "mlp"}, "priority": 0, "tiles": 2,
              "limit_s": 60.0}
    a, _ = svc.store.submit("acme", "t", fields, None)
    b, _ = svc.store.submit("acme", "t", fields, None)
    svc.store.transition("acme", a.id, ["queued"], "running", rect=[0, 0, 1, 2], runs=1,
                         host="local")
    svc.store.transition("acme", b.id, ["queued"], "running", rect=[1, 0, 1, 2], runs=1,
                         host="local")
    svc.store.transition("acme", b.id, ["running"], "cancelling")
    svc.controller.recover()   # what a restart after kill -9 does first
    ra, rb = svc.store.job("acme", a.id), svc.store.job("acme", b.id)
    assert ra is not None and rb is not None
    assert (ra.state, ra.rect, ra.runs) == ("queued", None, 1) and "restarted" in ra.reason
    assert rb.state == "cancelled"
    svc.store.close()


@pytest.mark.slow
def test_urgent_job_preempts_a_training_job_that_then_resumes(tmp_path: Path) -> None:
    token = make_tenant(tmp_path, "acme")   # an admin token may submit urgent jobs
    server = Server(tmp_path).start()
    try:
        c = Client(server.url, token)
        whole = {"tiles": 6, "plan": "dp=150", "batch": 150}
        low = c.submit({**TRAIN, **whole, "steps": 10})
        folder = tmp_path / "jobs" / "acme" / low["id"]
        wait_for(lambda: len(steps_of(folder)) >= 3, 180, what="3 training steps")
        urgent = c.submit({"kind": "simulate", "model": "mlp", **whole, "priority": 1})
        assert c.wait(urgent["id"], timeout_s=300)["state"] == "succeeded"
        done = c.wait(low["id"], timeout_s=300)
        assert done["state"] == "succeeded" and done["runs"] == 2
        lines = steps_of(folder)
        first_of_2 = next(ln["step"] for ln in lines if ln["run"] == 2)
        assert first_of_2 > 1   # resumed from the checkpoint saved when it was preempted
        assert [ln["step"] for ln in lines if ln["run"] == 2] == list(range(first_of_2, 11))
        actions = [a["action"] for a in c._call("GET", "/api/audit")
                   if a["target"] == low["id"]]
        assert "job.preempting" in actions
        # The urgent job ran while the preempted one was off the machine.
        u = c.job(urgent["id"])
        assert u["started_at"] < done["started_at"]
    finally:
        server.kill9()


@pytest.mark.slow
def test_tiles_auto_sizes_the_partition_with_the_planner(tmp_path: Path) -> None:
    # gpt2-medium at batch 50 does not fit one tile (SRAM only, no DIP HBM: `dojo plan
    # gpt2-medium --system tile --batch 50` refuses) and does fit the 6-tile tray.
    token = make_tenant(tmp_path, "acme")
    with Server(tmp_path) as server:
        c = Client(server.url, token)
        job = c.submit({"kind": "simulate", "model": "gpt2-medium", "tiles": "auto",
                        "batch": 50, "limit_s": 900})
        assert job["tiles"] == 0
        done = c.wait(job["id"], timeout_s=400)
        assert done["state"] == "succeeded", done
        assert 2 <= done["tiles"] <= 6 and "sized by the planner" in done["reason"]
        assert done["result"]["fits"] is True
        log = c.logs(job["id"])["text"]
        assert "1 tiles: does not fit" in log or "sizing: 1 tiles" not in log


@pytest.mark.slow
def test_occupancy_job_trains_on_synthesized_clips(tmp_path: Path) -> None:
    token = make_tenant(tmp_path, "acme")
    with Server(tmp_path) as server:
        c = Client(server.url, token)
        job = c.submit({"kind": "occupancy", "steps": 6, "clips": 4, "batch": 2,
                        "limit_s": 600})
        done = c.wait(job["id"], timeout_s=400)
        assert done["state"] == "succeeded", done
        folder = tmp_path / "jobs" / "acme" / job["id"]
        assert [ln["step"] for ln in steps_of(folder)] == list(range(1, 7))
        r = done["result"]
        assert 0.0 <= r["val_iou"] <= 1.0 and r["step_time_s"] > 0 and r["local_steps"] == 6
        assert (folder / "data" / "train").is_dir() and (folder / "report.html").is_file()


@pytest.mark.slow
def test_occupancy_job_trains_on_an_uploaded_dataset(tmp_path: Path) -> None:
    import io
    import urllib.request
    import zipfile

    from dojo.cli.main import main

    clips = tmp_path / "mine"
    for name, seed in (("train", "0"), ("val", "1")):
        assert main(["data", "synth", "--out", str(clips / name), "--clips", "3", "--cameras",
                     "2", "--frames", "8", "--size", "96x64", "--seed", seed]) == 0
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path in sorted(clips.rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(clips).as_posix())
    data = tmp_path / "server"
    data.mkdir()
    token = make_tenant(data, "acme")
    with Server(data) as server:
        req = urllib.request.Request(f"{server.url}/api/datasets/mine", data=buf.getvalue(),
                                     method="PUT", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status == 200
        c = Client(server.url, token)
        job = c.submit({"kind": "occupancy", "dataset": "mine", "steps": 4, "batch": 2})
        done = c.wait(job["id"], timeout_s=400)
        assert done["state"] == "succeeded", done
        folder = data / "jobs" / "acme" / job["id"]
        assert not (folder / "data").exists()          # trained on the upload, nothing made
        # 3 clips of 8 frames, windows of 4 frames: 3 x (8 - 4 + 1) = 15 training samples.
        assert done["result"]["train_samples"] == 15
