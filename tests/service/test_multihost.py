"""Jobs that span worker hosts, the fast half: admission of `hosts` / `ranks`, and the claim
of host slots in the store (SQLite and PostgreSQL): the first host to claim the job publishes
the rendezvous address and holds slot 0 in the same transaction; other hosts claim the other
slots, never two of one run on one host, never a slot of an old run, each slot once even when
hosts race for it. The two-host runs with real `dojo worker` processes are in
test_multihost_run.py (slow)."""

from __future__ import annotations

import threading

import pytest

from dojo.service.mesh import Machine
from dojo.service.multihost import rendezvous
from dojo.service.specs import Invalid, admit
from dojo.service.store import Store

V1 = Machine(2, 3, "v1")
SPEC = {"model": "mlp", "plan": "dp=50", "batch": 100, "steps": 4, "hosts": 2, "ranks": 4}


def make(db_url: tuple[str, str | None]) -> Store:
    store = Store(db_url[0], schema=db_url[1])
    store.migrate()
    store.create_tenant("acme", 100.0, "t1", "admin", "h")
    return store


def placed(store: Store, spec: dict[str, object], kind: str = "train", run: int = 1) -> str:
    job, _ = store.submit("acme", "t1", {"kind": kind, "spec": spec, "priority": 0,
                                         "tiles": 2, "limit_s": 600.0}, None)
    assert store.transition("acme", job.id, ["queued"], "running", rect=[0, 0, 1, 2],
                            runs=run, started_at=float(run), host=None)
    return job.id


def test_admission_of_hosts_and_ranks() -> None:
    ok = admit({"kind": "train", "tiles": 2, **SPEC}, V1)
    assert (ok.spec["hosts"], ok.spec["ranks"]) == (2, 4)
    with pytest.raises(Invalid) as err:
        admit({"kind": "train", "model": "mlp", "hosts": 2, "ranks": 3}, V1)
    assert err.value.lines == ["ranks = 3: expected a multiple of hosts (2) up to 16: the "
                               "data-parallel ranks, the same number on every host (train "
                               "jobs only)"]
    for bad in ({"kind": "simulate", "model": "mlp", "hosts": 2},
                {"kind": "train", "model": "mlp", "hosts": 0},
                {"kind": "train", "model": "mlp", "hosts": 9},
                {"kind": "train", "model": "mlp", "hosts": True}):
        with pytest.raises(Invalid) as err:
            admit(bad, V1)
        assert err.value.lines[0].startswith(f"hosts = {bad['hosts']!r}: expected a whole")


def test_slots_are_claimed_once_per_host_and_run(db_url: tuple[str, str | None]) -> None:
    store = make(db_url)
    single = placed(store, {"model": "mlp"})
    jid = placed(store, SPEC, run=1)
    # h1 claims the single-host job first (older start): no slots for it.
    first = store.claim("h1", 10.0, lambda: ("127.0.0.1", 1111))
    assert first is not None and first.id == single
    assert store.slots_of("acme", single, 1) == []
    job = store.claim("h1", 10.0, lambda: ("127.0.0.1", 4242))
    assert job is not None and job.id == jid and job.host == "h1"
    slots = store.slots_of("acme", jid, 1)
    assert [(s.slot, s.hosts, s.addr, s.port) for s in slots] == [
        (0, 2, "127.0.0.1", 4242), (1, 2, "127.0.0.1", 4242)]
    assert store.slot_hosts("acme", jid, 1) == ["h1", None]
    assert store.claim_slot("h1", 11.0) is None       # never two slots of one run on one host
    got = store.claim_slot("h2", 11.0)
    assert got is not None and (got.job_id, got.run, got.slot, got.port) == (jid, 1, 1, 4242)
    assert rendezvous(job, got) == {"addr": "127.0.0.1", "port": 4242, "slot": 1, "hosts": 2,
                                    "ranks": 4}
    assert store.claim_slot("h3", 11.0) is None       # every slot taken
    assert store.slot_hosts("acme", jid, 1) == ["h1", "h2"]
    # Requeued as a whole and placed again (run 2): the old run's slots are dead; whoever
    # claims the job now is the rendezvous host and publishes a new address.
    assert store.transition("acme", jid, ["running"], "queued", host=None, rect=None)
    assert store.claim_slot("h3", 12.0) is None       # queued: nothing to join
    assert store.transition("acme", jid, ["queued"], "running", rect=[0, 0, 1, 2], runs=2,
                            started_at=12.0, host=None)
    again = store.claim("h2", 12.0, lambda: ("127.0.0.1", 4343))
    assert again is not None and again.id == jid and again.runs == 2
    joined = store.claim_slot("h1", 13.0)
    assert joined is not None and (joined.run, joined.slot, joined.port) == (2, 1, 4343)
    assert store.slot_hosts("acme", jid, 1) == ["h1", "h2"]
    assert store.slot_hosts("acme", jid, 2) == ["h2", "h1"]
    actions = [a["action"] for a in store.audit_log("acme")]
    assert actions.count("job.claim_slot") == 2 and actions.count("job.claim") == 3
    store.close()


def test_racing_hosts_get_each_slot_once(db_url: tuple[str, str | None]) -> None:
    store = make(db_url)
    jid = placed(store, {**SPEC, "hosts": 3, "ranks": 3})
    assert store.claim("h0", 1.0, lambda: ("127.0.0.1", 5000)) is not None
    won: list[tuple[str, int]] = []
    go = threading.Barrier(6)

    def race(host: str) -> None:
        go.wait()
        got = store.claim_slot(host, 2.0)
        if got is not None:
            won.append((host, got.slot))

    threads = [threading.Thread(target=race, args=(f"r{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(s for _, s in won) == [1, 2] and len({h for h, _ in won}) == 2
    assert sorted(h for h in store.slot_hosts("acme", jid, 1)[1:] if h) == sorted(
        h for h, _ in won)
    store.close()
