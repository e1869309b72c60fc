"""The HTTP API in-process (FastAPI's TestClient): auth, roles, tenant isolation, admission
errors, idempotency, quotas, abuse (oversized and malformed bodies, traversal, flooding) and one
controller tick that gives a job a rectangle. Workers are not started here (test_durability)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from dojo.service.app import RateLimit, create_app
from dojo.service.auth import new_token
from dojo.service.mesh import Rect
from dojo.service.server import Settings, build


def tenant(svc: Any, name: str, quota: float = 100.0, role: str = "admin") -> str:
    tid, token, digest = new_token()
    svc.store.create_tenant(name, quota, tid, role, digest)
    return token


def token_for(svc: Any, name: str, role: str) -> str:
    tid, token, digest = new_token()
    svc.store.add_token(name, tid, role, digest)
    return token


@pytest.fixture()
def env(tmp_path: Path) -> Any:
    svc = build(Settings(data=tmp_path, system="v1"))
    client = TestClient(create_app(svc, RateLimit(rate=5.0, burst=30.0)))
    yield svc, client
    svc.store.close()


def h(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


SIM = {"kind": "simulate", "model": "mlp", "tiles": 2, "limit_s": 600}


def test_auth_roles_and_isolation(env: Any) -> None:
    svc, client = env
    a, b = tenant(svc, "acme"), tenant(svc, "zeta")
    reader = token_for(svc, "acme", "read-only")
    assert client.get("/api/jobs").status_code == 401
    assert client.get("/api/jobs", headers=h(a[:-2] + "zz")).status_code == 401
    tid, expired, digest = new_token()
    svc.store.add_token("acme", tid, "admin", digest, expires_at=1.0)  # expired in 1970
    assert client.get("/api/jobs", headers=h(expired)).status_code == 401
    assert client.get("/api/jobs", headers={"Authorization": a}).status_code == 401  # no scheme
    r = client.post("/api/jobs", json=SIM, headers=h(a))
    assert r.status_code == 201, r.text
    jid = r.json()["id"]
    assert client.get(f"/api/jobs/{jid}", headers=h(a)).json()["state"] == "queued"
    # Another tenant: the id does not exist for it, nor do its logs or artifacts.
    for path in (f"/api/jobs/{jid}", f"/api/jobs/{jid}/logs", f"/api/jobs/{jid}/metrics"):
        assert client.get(path, headers=h(b)).status_code == 404
    assert client.post(f"/api/jobs/{jid}/cancel", headers=h(b)).status_code == 404
    assert client.get("/api/jobs", headers=h(b)).json() == []
    # Read-only reads but cannot write.
    assert client.get(f"/api/jobs/{jid}", headers=h(reader)).status_code == 200
    assert client.post("/api/jobs", json=SIM, headers=h(reader)).status_code == 403
    # The audit log records the submission by the token's id, never the token.
    log = client.get("/api/audit", headers=h(a)).json()
    assert log[0]["action"] == "job.submit" and a not in str(log)
    assert client.get("/api/audit", headers=h(reader)).status_code == 403


def test_admission_errors_one_line_per_field(env: Any) -> None:
    svc, client = env
    a = tenant(svc, "acme")
    bad = {"kind": "bake", "model": "../../etc", "tiles": 7, "limit_s": -1, "plan": "dp=x",
           "colour": "red"}
    r = client.post("/api/jobs", json=bad, headers=h(a))
    assert r.status_code == 422
    lines = r.json()["detail"]
    fields = sorted(line.split(" ")[0].rstrip(":") for line in lines)
    assert fields == ["colour", "kind", "limit_s", "model", "plan", "tiles"]
    assert any("2 x 3" in line for line in lines)  # tiles: the V1 mesh named
    r = client.post("/api/jobs", json={**SIM, "tiles": "auto"}, headers=h(a))
    assert r.status_code == 422 and r.json()["detail"][0].startswith("tiles = 'auto'")
    r = client.post("/api/jobs", json={**SIM, "tiles": "auto", "batch": 8}, headers=h(a))
    assert r.status_code == 201 and r.json()["tiles"] == 0   # sized later, by a worker
    r = client.post("/api/jobs", json={**SIM, "model": "evil.py:make"}, headers=h(a))
    assert r.status_code == 422 and "refused" in r.json()["detail"][0]


def test_abuse_gets_the_right_status(env: Any) -> None:
    svc, client = env
    a = tenant(svc, "acme")
    assert client.post("/api/jobs", content=b"{not json", headers=h(a)).status_code == 400
    big = b'{"kind": "' + b"x" * 70_000 + b'"}'
    assert client.post("/api/jobs", content=big, headers=h(a)).status_code == 413
    jid = client.post("/api/jobs", json=SIM, headers=h(a)).json()["id"]
    for name in ("..%2F..%2Fdojo.db", "../dojo.db", "job.json", "lock"):
        r = client.get(f"/api/jobs/{jid}/artifacts/{name}", headers=h(a))
        assert r.status_code == 404, name
    # Flooding: the bucket (burst 30) empties, then 429 for this tenant only.
    codes = [client.get("/api/usage", headers=h(a)).status_code for _ in range(40)]
    assert 429 in codes and codes[0] == 200
    b = tenant(svc, "zeta")
    assert client.get("/api/usage", headers=h(b)).status_code == 200


def test_idempotency_and_quota(env: Any) -> None:
    svc, client = env
    a = tenant(svc, "acme", quota=1.0)  # 1 tile-hour
    one = {**SIM, "tiles": 1, "limit_s": 1800}   # 0.5 tile-hours each
    r1 = client.post("/api/jobs", json=one, headers=h(a, **{"Idempotency-Key": "k1"}))
    r2 = client.post("/api/jobs", json=one, headers=h(a, **{"Idempotency-Key": "k1"}))
    assert (r1.status_code, r2.status_code) == (201, 200) and r1.json()["id"] == r2.json()["id"]
    assert client.post("/api/jobs", json=one, headers=h(a)).status_code == 201
    r3 = client.post("/api/jobs", json=one, headers=h(a))  # 1.5 > 1 tile-hour
    assert r3.status_code == 422 and "quota" in r3.json()["detail"][0]
    use = client.get("/api/usage", headers=h(a)).json()
    assert use["committed_tile_hours"] == pytest.approx(1.0)


def test_a_controller_tick_allocates_a_rectangle(env: Any, monkeypatch: Any) -> None:
    svc, client = env
    a, b = tenant(svc, "acme"), tenant(svc, "zeta")
    launched: list[Any] = []
    monkeypatch.setattr(svc.controller.agent, "_launch",
                        lambda job, now: launched.append(Rect(*job.rect)))
    client.post("/api/jobs", json={**SIM, "tiles": 4}, headers=h(a))
    client.post("/api/jobs", json={**SIM, "tiles": 4}, headers=h(b))
    svc.controller.tick(1e9)
    # V1 is 2 x 3: one 4-tile rectangle (2 x 2) fits, the other job waits.
    assert len(launched) == 1 and (launched[0].rows, launched[0].cols) == (2, 2)
    m = client.get("/api/machine", headers=h(a)).json()
    assert (m["rows"], m["cols"], m["queued"]) == (2, 3, 1)
    owners = {t["tenant"] for t in m["allocations"]}
    assert owners <= {"acme", "other"} and len(m["allocations"]) == 1


def test_concurrent_submissions_cannot_overrun_the_quota(env: Any) -> None:
    import threading

    from dojo.service import ops
    from dojo.service.auth import Identity

    svc, _ = env
    tenant(svc, "acme", quota=1.5)  # room for exactly 3 jobs of 0.5 tile-hours
    who = Identity("acme", "t", "member")
    outcomes: list[int] = []

    def submit() -> None:
        try:
            ops.submit(svc, who, {**SIM, "tiles": 1, "limit_s": 1800}, None)
            outcomes.append(201)
        except ops.Refused as err:
            outcomes.append(err.status)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [201] * 3 + [422] * 5
    assert len(svc.store.jobs("acme")) == 3


def _zip(entries: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_dataset_uploads_are_checked_and_scoped(env: Any) -> None:
    svc, client = env
    a, b = tenant(svc, "acme"), tenant(svc, "zeta")
    reader = token_for(svc, "acme", "read-only")
    good = _zip({"train/manifest.json": b"{}", "val/manifest.json": b"{}",
                 "train/clip_0000/front.mp4": b"x"})
    bad = {
        "traversal": _zip({"train/../../../etc/x": b"x", "val/manifest.json": b"{}"}),
        "absolute": _zip({"/train/x": b"x", "val/manifest.json": b"{}"}),
        "outside": _zip({"train/m": b"x", "val/m": b"x", "other/m": b"x"}),
        "no val": _zip({"train/manifest.json": b"{}"}),
        "not a zip": b"hello",
    }
    for why, body in bad.items():
        r = client.put("/api/datasets/clips", content=body, headers=h(a))
        assert r.status_code == 422, why
    assert not (tmp := svc.data / "datasets" / "acme" / "clips").exists(), tmp
    assert not list((svc.data.parent).glob("etc"))
    assert client.put("/api/datasets/Bad..Name", content=good, headers=h(a)).status_code == 422
    assert client.put("/api/datasets/clips", content=good, headers=h(reader)).status_code == 403
    r = client.put("/api/datasets/clips", content=good, headers=h(a))
    assert r.status_code == 200 and r.json()["files"] == 3
    assert client.get("/api/datasets", headers=h(a)).json() == ["clips"]
    assert client.get("/api/datasets", headers=h(b)).json() == []
    occ = {"kind": "occupancy", "dataset": "clips", "steps": 2}
    assert client.post("/api/jobs", json=occ, headers=h(a)).status_code == 201
    r = client.post("/api/jobs", json=occ, headers=h(b))   # zeta has no dataset "clips"
    assert r.status_code == 422 and r.json()["detail"][0].startswith("dataset = 'clips'")
