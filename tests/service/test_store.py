"""The store on SQLite and PostgreSQL: migrations, tenant-keyed jobs, compare-and-set state
changes, idempotency keys, usage sums, hashed tokens and the audit log."""

from __future__ import annotations

import json

import pytest

from dojo.service.auth import Verifier, new_token
from dojo.service.store import Conflict, Store


def make(db_url: tuple[str, str | None]) -> Store:
    url, schema = db_url
    store = Store(url, schema=schema)
    store.migrate()
    store.migrate()  # idempotent: already at head
    return store


FIELDS = {"kind": "simulate", "spec": {"model": "mlp"}, "priority": 0, "tiles": 2,
          "limit_s": 600.0}


def test_tenants_tokens_and_isolation(db_url: tuple[str, str | None]) -> None:
    store = make(db_url)
    tid, token, digest = new_token()
    store.create_tenant("acme", 100.0, tid, "admin", digest)
    with pytest.raises(Conflict):
        store.create_tenant("acme", 5.0, "other", "admin", digest)
    tid2, _, digest2 = new_token()
    store.create_tenant("zeta", 10.0, tid2, "member", digest2)
    # The token is not stored anywhere in clear.
    row = store.token(tid)
    assert row is not None and token not in json.dumps(row) and row["tenant_id"] == "acme"
    who = Verifier(store.token).check(token)
    assert who is not None and (who.tenant, who.role) == ("acme", "admin")
    assert Verifier(store.token).check(token[:-1] + "x") is None
    job, created = store.submit("acme", tid, FIELDS, None)
    assert created and job.state == "queued" and job.spec == {"model": "mlp"}
    assert store.job("zeta", job.id) is None          # another tenant's id: nothing
    assert [j.id for j in store.jobs("acme")] == [job.id] and store.jobs("zeta") == []
    actions = [a["action"] for a in store.audit_log("acme")]
    assert actions == ["job.submit", "tenant.create"]
    store.close()


def test_transitions_are_compare_and_set(db_url: tuple[str, str | None]) -> None:
    store = make(db_url)
    store.create_tenant("acme", 100.0, "t1", "admin", "h")
    job, _ = store.submit("acme", "t1", FIELDS, None)
    assert store.transition("acme", job.id, ["queued"], "running", rect=[0, 0, 1, 2],
                            runs=1, started_at=1.0)
    # A second start from "queued" fails: the job is no longer queued.
    assert not store.transition("acme", job.id, ["queued"], "running")
    assert not store.transition("zeta", job.id, ["running"], "failed")
    assert store.transition("acme", job.id, ["running"], "succeeded", used_tile_s=120.0,
                            result={"loss": 1.5})
    done = store.job("acme", job.id)
    assert done is not None and done.state == "succeeded" and done.rect == [0, 0, 1, 2]
    assert done.result == {"loss": 1.5}
    # used: 120 tile-s; committed: only active jobs count (none now).
    assert store.usage("acme") == {"used_tile_s": 120.0, "committed_tile_s": 0.0}
    store.submit("acme", "t1", FIELDS, None)
    assert store.usage("acme")["committed_tile_s"] == 2 * 600.0
    # Fair share's recent use: 120 tile-s halve once per half-life after the run finished.
    store.transition("acme", job.id, ["succeeded"], "succeeded", finished_at=1000.0)
    assert store.used_by_tenant(1000.0 + 3600.0, 3600.0) == {"acme": pytest.approx(60.0)}
    store.close()


def test_idempotency_key_returns_the_first_job(db_url: tuple[str, str | None]) -> None:
    store = make(db_url)
    store.create_tenant("acme", 100.0, "t1", "admin", "h")
    store.create_tenant("zeta", 100.0, "t2", "admin", "h")
    a, created_a = store.submit("acme", "t1", FIELDS, "key-1")
    b, created_b = store.submit("acme", "t1", FIELDS, "key-1")
    c, created_c = store.submit("zeta", "t2", FIELDS, "key-1")  # keys are per tenant
    assert created_a and not created_b and created_c
    assert a.id == b.id != c.id and len(store.jobs("acme")) == 1
    store.close()
