"""The durable store: every SQL statement of the service lives here (style rule 15).

SQLAlchemy 2 Core over SQLite (the embedded default, a file in the data folder) or PostgreSQL
(by URL); the schema is made by Alembic migrations (`migrations/`). Each method is one
transaction. Job rows are keyed by (tenant, id): every query about a tenant's job names the
tenant in its key, so another tenant's id simply matches nothing. State changes are
compare-and-set (`transition` updates only from the states it expects), which is what keeps a job
from being started twice after a crash. Token hashes are stored; tokens never are.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

meta = sa.MetaData()
tenants = sa.Table("tenants", meta, sa.Column("id", sa.String, primary_key=True),
                   sa.Column("quota_tile_hours", sa.Float), sa.Column("created_at", sa.Float))
tokens = sa.Table("tokens", meta, sa.Column("id", sa.String, primary_key=True),
                  sa.Column("tenant_id", sa.String), sa.Column("role", sa.String),
                  sa.Column("hash", sa.String), sa.Column("created_at", sa.Float),
                  sa.Column("expires_at", sa.Float))
jobs = sa.Table("jobs", meta, *(sa.Column(n, sa.String, primary_key=n in ("tenant_id", "id"))
                                for n in ("tenant_id", "id", "kind", "spec", "state", "reason",
                                          "rect", "result", "idempotency_key", "created_by",
                                          "host")),
                *(sa.Column(n, sa.Integer) for n in ("priority", "tiles", "attempts", "runs")),
                *(sa.Column(n, sa.Float) for n in ("limit_s", "submitted_at", "started_at",
                                                   "finished_at", "used_tile_s", "progress",
                                                   "heartbeat_at")))
audit = sa.Table("audit", meta, sa.Column("seq", sa.Integer, primary_key=True),
                 sa.Column("tenant_id", sa.String), sa.Column("actor", sa.String),
                 sa.Column("action", sa.String), sa.Column("target", sa.String),
                 sa.Column("detail", sa.String), sa.Column("at", sa.Float))

slots = sa.Table("slots", meta, *(sa.Column(n, sa.String, primary_key=n in ("tenant_id", "job_id"))
                                  for n in ("tenant_id", "job_id", "host", "addr")),
                 sa.Column("run", sa.Integer, primary_key=True),
                 sa.Column("slot", sa.Integer, primary_key=True), sa.Column("port", sa.Integer),
                 sa.Column("claimed_at", sa.Float))

ACTIVE = ("queued", "sizing", "running", "preempting", "cancelling")
FINAL = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class Job:
    tenant: str
    id: str
    kind: str
    spec: dict[str, Any]
    state: str
    priority: int
    tiles: int
    limit_s: float
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    runs: int
    reason: str
    rect: list[int] | None
    used_tile_s: float
    progress: float
    result: dict[str, Any] | None
    created_by: str
    idempotency_key: str | None = None
    host: str | None = None          # the worker host that claimed it (None: not yet claimed)
    heartbeat_at: float | None = None


def _job(row: Any) -> Job:
    m = row._mapping
    return Job(tenant=m["tenant_id"], id=m["id"], kind=m["kind"], spec=json.loads(m["spec"]),
               state=m["state"], priority=m["priority"], tiles=m["tiles"], limit_s=m["limit_s"],
               submitted_at=m["submitted_at"], started_at=m["started_at"],
               finished_at=m["finished_at"], attempts=m["attempts"], runs=m["runs"],
               reason=m["reason"] or "", rect=json.loads(m["rect"]) if m["rect"] else None,
               used_tile_s=m["used_tile_s"] or 0.0, progress=m["progress"] or 0.0,
               result=json.loads(m["result"]) if m["result"] else None,
               created_by=m["created_by"], idempotency_key=m["idempotency_key"],
               host=m["host"], heartbeat_at=m["heartbeat_at"])


@dataclass(frozen=True)
class Slot:
    """One host's part of a run of a job that spans hosts: `slot` of `hosts`, the rendezvous
    address (`addr`, `port`) slot 0 published."""

    tenant: str
    job_id: str
    run: int
    slot: int
    hosts: int
    addr: str
    port: int


class Conflict(Exception):
    """A name that exists already."""


class Store:
    """The service's state. `url`: a SQLAlchemy URL (sqlite:///path or postgresql://...);
    `schema` (PostgreSQL only) puts every table in that schema, created if missing."""

    def __init__(self, url: str, schema: str | None = None) -> None:
        self.url = url
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        args: dict[str, Any] = {}
        if url.startswith("sqlite"):
            args = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        else:  # PostgreSQL: as many connections as the API's worker threads (40)
            args = {"pool_size": 20, "max_overflow": 30,
                    "connect_args": {"connect_timeout": 10}}  # an unreachable host: seconds
            if schema:
                args["connect_args"]["options"] = f"-csearch_path={schema}"
        self.engine = sa.create_engine(url, **args)
        if url.startswith("sqlite"):
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        if schema and not url.startswith("sqlite"):
            with self.engine.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def close(self) -> None:
        self.engine.dispose()

    # -- tenants and tokens ------------------------------------------------------------------
    def create_tenant(self, name: str, quota_tile_hours: float, token_id: str, role: str,
                      token_hash: str) -> None:
        """The tenant and its first token, in one transaction; `Conflict` if the name exists."""
        now = time.time()
        try:
            with self.engine.begin() as c:
                c.execute(tenants.insert().values(id=name, quota_tile_hours=quota_tile_hours,
                                                  created_at=now))
                c.execute(tokens.insert().values(id=token_id, tenant_id=name, role=role,
                                                 hash=token_hash, created_at=now))
                c.execute(audit.insert().values(tenant_id=name, actor="admin",
                                                action="tenant.create", target=name,
                                                detail=f"quota {quota_tile_hours} tile-hours",
                                                at=now))
        except IntegrityError as err:
            raise Conflict(name) from err

    def add_token(self, tenant: str, token_id: str, role: str, token_hash: str,
                  expires_at: float | None = None) -> None:
        with self.engine.begin() as c:
            c.execute(tokens.insert().values(id=token_id, tenant_id=tenant, role=role,
                                             hash=token_hash, created_at=time.time(),
                                             expires_at=expires_at))
            c.execute(audit.insert().values(tenant_id=tenant, actor="admin",
                                            action="token.create", target=token_id,
                                            detail=role, at=time.time()))

    def token(self, token_id: str) -> dict[str, Any] | None:
        """The token row (tenant, role, hash, expiry) for authentication, by its public id."""
        with self.engine.connect() as c:
            row = c.execute(sa.select(tokens).where(tokens.c.id == token_id)).first()
        return dict(row._mapping) if row else None

    def tenant(self, tenant: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            row = c.execute(sa.select(tenants).where(tenants.c.id == tenant)).first()
        return dict(row._mapping) if row else None

    def tenants(self) -> dict[str, float]:
        """Every tenant's quota (tile-hours): the scheduler's fair-share weights."""
        with self.engine.connect() as c:
            return {r.id: r.quota_tile_hours for r in c.execute(sa.select(tenants))}

    # -- jobs -------------------------------------------------------------------------------
    def submit(self, tenant: str, actor: str, fields: dict[str, Any],
               idempotency_key: str | None) -> tuple[Job, bool]:
        """Insert a queued job (and its audit line) in one transaction. With an idempotency key
        already used by this tenant, the earlier job comes back instead; (job, created)."""
        if idempotency_key:
            old = self.job_by_key(tenant, idempotency_key)
            if old is not None:
                return old, False
        jid = uuid.uuid4().hex[:16]
        now = time.time()
        row = dict(tenant_id=tenant, id=jid, kind=fields["kind"],
                   spec=json.dumps(fields["spec"], sort_keys=True), state="queued",
                   priority=fields["priority"], tiles=fields["tiles"], limit_s=fields["limit_s"],
                   submitted_at=now, attempts=0, runs=0, reason="", used_tile_s=0.0,
                   progress=0.0, idempotency_key=idempotency_key, created_by=actor)
        try:
            with self.engine.begin() as c:
                c.execute(jobs.insert().values(**row))
                c.execute(audit.insert().values(tenant_id=tenant, actor=actor,
                                                action="job.submit", target=jid,
                                                detail=fields["kind"], at=now))
        except IntegrityError:
            old = self.job_by_key(tenant, idempotency_key or "")
            if old is None:
                raise
            return old, False
        job = self.job(tenant, jid)
        assert job is not None
        return job, True

    def job_by_key(self, tenant: str, key: str) -> Job | None:
        with self.engine.connect() as c:
            row = c.execute(sa.select(jobs).where(jobs.c.tenant_id == tenant,
                                                  jobs.c.idempotency_key == key)).first()
        return _job(row) if row else None

    def job(self, tenant: str, job_id: str) -> Job | None:
        with self.engine.connect() as c:
            row = c.execute(sa.select(jobs).where(jobs.c.tenant_id == tenant,
                                                  jobs.c.id == job_id)).first()
        return _job(row) if row else None

    def jobs(self, tenant: str, limit: int = 200) -> list[Job]:
        """The tenant's `limit` newest jobs, newest first."""
        with self.engine.connect() as c:
            rows = c.execute(sa.select(jobs).where(jobs.c.tenant_id == tenant)
                             .order_by(jobs.c.submitted_at.desc()).limit(limit))
            return [_job(r) for r in rows]

    def active(self) -> list[Job]:
        """Every tenant's queued and running jobs: what the controller schedules."""
        with self.engine.connect() as c:
            rows = c.execute(sa.select(jobs).where(jobs.c.state.in_(ACTIVE))
                             .order_by(jobs.c.submitted_at))
            return [_job(r) for r in rows]

    def transition(self, tenant: str, job_id: str, expect: Iterable[str], state: str,
                   actor: str = "scheduler", on_host: str | None = None,
                   **values: Any) -> bool:
        """Move a job to `state` only if it is in one of `expect` (and, with `on_host`, claimed
        by that host): compare-and-set, with the given column values and an audit line, in one
        transaction. False when it was not."""
        for key in ("rect", "result"):
            if key in values and values[key] is not None:
                values[key] = json.dumps(values[key])
        where = [jobs.c.tenant_id == tenant, jobs.c.id == job_id,
                 jobs.c.state.in_(tuple(expect))]
        if on_host is not None:
            where.append(jobs.c.host == on_host)
        with self.engine.begin() as c:
            done = c.execute(jobs.update().where(*where).values(state=state, **values)).rowcount
            if done:
                c.execute(audit.insert().values(tenant_id=tenant, actor=actor,
                                                action=f"job.{state}", target=job_id,
                                                detail=str(values.get("reason", ""))[:500],
                                                at=time.time()))
        return bool(done)

    # -- worker hosts -----------------------------------------------------------------------
    def claim(self, host: str, now: float,
              rendezvous: Callable[[], tuple[str, int]] | None = None) -> Job | None:
        """Claim one placed (or to be sized), unclaimed job for `host`: SELECT ... FOR
        UPDATE SKIP LOCKED on PostgreSQL, so hosts never wait on each other; the UPDATE is
        compare-and-set on `host IS NULL` as well, which is what makes SQLite safe too.

        A train job of `hosts` > 1 makes `host` its rendezvous host: in the same transaction
        slot 0 is recorded for it with the address `rendezvous()` gives (where its ranks' TCP
        store listens), and slots 1 .. hosts-1 are opened for other hosts (`claim_slot`)."""
        with self.engine.begin() as c:
            row = c.execute(sa.select(jobs.c.tenant_id, jobs.c.id)
                            .where(jobs.c.state.in_(("running", "sizing")),
                                   jobs.c.host.is_(None))
                            .order_by(jobs.c.started_at).limit(1)
                            .with_for_update(skip_locked=True)).first()
            if row is None:
                return None
            done = c.execute(jobs.update().where(jobs.c.tenant_id == row[0], jobs.c.id == row[1],
                                                 jobs.c.state.in_(("running", "sizing")),
                                                 jobs.c.host.is_(None))
                             .values(host=host, heartbeat_at=now)).rowcount
            if not done:
                return None
            got = c.execute(sa.select(jobs).where(jobs.c.tenant_id == row[0],
                                                  jobs.c.id == row[1])).one()
            job = _job(got)
            n = hosts_of(job)
            if n > 1 and job.state == "running":
                addr, port = rendezvous() if rendezvous else ("127.0.0.1", 29500)
                c.execute(slots.insert(), [dict(tenant_id=job.tenant, job_id=job.id,
                                                run=job.runs, slot=k, addr=addr, port=port,
                                                host=host if k == 0 else None,
                                                claimed_at=now if k == 0 else None)
                                           for k in range(n)])
            c.execute(audit.insert().values(tenant_id=row[0], actor=host, action="job.claim",
                                            target=row[1], detail="", at=now))
        return job

    def claim_slot(self, host: str, now: float) -> Slot | None:
        """Claim one open host slot of a running job that spans hosts, for `host`: never a
        second slot of a run `host` already takes part in; only slots of the job's current run
        (a requeued job's old slots are dead). SKIP LOCKED and compare-and-set as `claim`; on
        SQLite (no row locks) a host that loses the compare-and-set tries again (5 times)."""
        for _ in range(5):
            got = self._claim_slot(host, now)
            if got != "lost":
                return got if isinstance(got, Slot) else None
        return None

    def _claim_slot(self, host: str, now: float) -> Slot | str | None:
        held = slots.alias("held")
        mine = sa.select(held.c.job_id).where(held.c.host == host,
                                              held.c.tenant_id == jobs.c.tenant_id,
                                              held.c.job_id == jobs.c.id,
                                              held.c.run == jobs.c.runs)
        with self.engine.begin() as c:
            row = c.execute(sa.select(slots).join(jobs, sa.and_(
                jobs.c.tenant_id == slots.c.tenant_id, jobs.c.id == slots.c.job_id,
                jobs.c.runs == slots.c.run))
                .where(slots.c.host.is_(None), jobs.c.state == "running",
                       jobs.c.host.is_not(None), jobs.c.host != host, ~sa.exists(mine))
                .order_by(jobs.c.started_at, slots.c.slot).limit(1)
                .with_for_update(skip_locked=True, of=slots)).first()
            if row is None:
                return None
            m = row._mapping
            key = (slots.c.tenant_id == m["tenant_id"], slots.c.job_id == m["job_id"],
                   slots.c.run == m["run"])
            done = c.execute(slots.update().where(*key, slots.c.slot == m["slot"],
                                                  slots.c.host.is_(None))
                             .values(host=host, claimed_at=now)).rowcount
            if not done:
                return "lost"
            n = c.execute(sa.select(sa.func.count()).select_from(slots).where(*key)).scalar_one()
            c.execute(audit.insert().values(tenant_id=m["tenant_id"], actor=host,
                                            action="job.claim_slot", target=m["job_id"],
                                            detail=f"host {m['slot']} of {n}, run {m['run']}",
                                            at=now))
        return Slot(m["tenant_id"], m["job_id"], m["run"], m["slot"], int(n), m["addr"],
                    m["port"])

    def slots_of(self, tenant: str, job_id: str, run: int) -> list[Slot]:
        """The host slots of one run of a job, by slot (empty for a job on one host)."""
        with self.engine.connect() as c:
            rows = list(c.execute(sa.select(slots).where(
                slots.c.tenant_id == tenant, slots.c.job_id == job_id, slots.c.run == run)
                .order_by(slots.c.slot)))
        return [Slot(r.tenant_id, r.job_id, r.run, r.slot, len(rows), r.addr, r.port)
                for r in rows]

    def slot_hosts(self, tenant: str, job_id: str, run: int) -> list[str | None]:
        """Which host holds each slot of the run (None: open)."""
        with self.engine.connect() as c:
            return [r.host for r in c.execute(sa.select(slots.c.host).where(
                slots.c.tenant_id == tenant, slots.c.job_id == job_id, slots.c.run == run)
                .order_by(slots.c.slot))]

    def heartbeat(self, host: str, now: float) -> None:
        """`host` is alive: stamp every job it holds."""
        with self.engine.begin() as c:
            c.execute(jobs.update().where(jobs.c.host == host, jobs.c.state.in_(ACTIVE))
                      .values(heartbeat_at=now))

    def host_jobs(self, host: str) -> list[Job]:
        """The active jobs claimed by `host`."""
        with self.engine.connect() as c:
            rows = c.execute(sa.select(jobs).where(jobs.c.host == host,
                                                   jobs.c.state.in_(ACTIVE)))
            return [_job(r) for r in rows]

    def usage(self, tenant: str) -> dict[str, float]:
        """Tile-seconds used by finished runs, and committed by active jobs (tiles x limit)."""
        with self.engine.connect() as c:
            used = c.execute(sa.select(sa.func.coalesce(sa.func.sum(jobs.c.used_tile_s), 0.0))
                             .where(jobs.c.tenant_id == tenant)).scalar_one()
            committed = c.execute(
                sa.select(sa.func.coalesce(sa.func.sum(jobs.c.tiles * jobs.c.limit_s), 0.0))
                .where(jobs.c.tenant_id == tenant, jobs.c.state.in_(ACTIVE))).scalar_one()
        return {"used_tile_s": float(used), "committed_tile_s": float(committed)}

    def used_by_tenant(self, now: float, half_life_s: float) -> dict[str, float]:
        """Each tenant's recent use for fair share: every job's tile-seconds, halved for every
        `half_life_s` since it last ran (finished, or now while it runs)."""
        with self.engine.connect() as c:
            rows = c.execute(sa.select(jobs.c.tenant_id, jobs.c.used_tile_s, jobs.c.finished_at)
                             .where(jobs.c.used_tile_s > 0))
            out: dict[str, float] = {}
            for tenant, used, finished in rows:
                age = max(0.0, now - (finished if finished is not None else now))
                out[tenant] = out.get(tenant, 0.0) + float(used) * 0.5 ** (age / half_life_s)
            return out

    # -- audit ------------------------------------------------------------------------------
    def log(self, tenant: str, actor: str, action: str, target: str, detail: str = "") -> None:
        with self.engine.begin() as c:
            c.execute(audit.insert().values(tenant_id=tenant, actor=actor, action=action,
                                            target=target, detail=detail, at=time.time()))

    def audit_log(self, tenant: str, limit: int = 200) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(audit).where(audit.c.tenant_id == tenant)
                             .order_by(audit.c.seq.desc()).limit(limit))
            return [dict(r._mapping) for r in rows]


def hosts_of(job: Job) -> int:
    """How many hosts a job spans (1 but for train jobs with a `hosts` field)."""
    return int(job.spec.get("hosts", 1)) if job.kind == "train" else 1


def _sqlite_pragmas(dbapi_conn: Any, record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
