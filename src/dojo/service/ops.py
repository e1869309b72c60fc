"""What the API does, one function per route (the routes in `app` only parse and call these).

Every function takes the caller's `Identity` and reaches only that tenant's rows and files: a job
id of another tenant is "not found", exactly like an id that never existed.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dojo.service import datasets
from dojo.service.auth import Identity
from dojo.service.controller import Controller
from dojo.service.mesh import Machine
from dojo.service.specs import admit
from dojo.service.store import ACTIVE, Job, Store

ARTIFACTS = ("report.html", "result.json", "metrics.jsonl", "log.txt")


class Refused(Exception):
    """An HTTP error: `status` and a one-line `detail` (never a secret)."""

    def __init__(self, status: int, detail: str | list[str]) -> None:
        self.status = status
        self.detail = detail
        super().__init__(str(detail))


@dataclass
class Service:
    store: Store
    machine: Machine
    system: str
    data: Path
    controller: Controller
    allow_factories: bool = False


def public(job: Job) -> dict[str, Any]:
    return {"id": job.id, "tenant": job.tenant, "kind": job.kind, "state": job.state,
            "spec": job.spec, "tiles": job.tiles, "limit_s": job.limit_s,
            "priority": job.priority, "submitted_at": job.submitted_at,
            "started_at": job.started_at, "finished_at": job.finished_at,
            "attempts": job.attempts, "runs": job.runs, "reason": job.reason, "rect": job.rect,
            "used_tile_s": job.used_tile_s, "result": job.result,
            "idempotency_key": job.idempotency_key}


def _writer(who: Identity) -> None:
    if not who.can_write():
        raise Refused(403, f"token role '{who.role}' is read-only")


def _own(svc: Service, who: Identity, job_id: str) -> Job:
    job = svc.store.job(who.tenant, job_id) if len(job_id) <= 64 else None
    if job is None:
        raise Refused(404, f"no job '{job_id[:64]}'")
    return job


def submit(svc: Service, who: Identity, body: Any, key: str | None) -> tuple[dict[str, Any],
                                                                              bool]:
    """Admit and queue a job; quotas in tile-hours are enforced here. (job, created)."""
    from dojo.service.specs import Invalid

    _writer(who)
    if key is not None and not 1 <= len(key) <= 128:
        raise Refused(422, ["Idempotency-Key: expected 1 to 128 characters"])
    try:
        ok = admit(body, svc.machine, allow_factories=svc.allow_factories,
                   may_prioritise=who.role == "admin")
    except Invalid as err:
        raise Refused(422, err.lines) from None
    dataset = ok.spec.get("dataset")
    if dataset is not None and not datasets.folder(svc.data, who.tenant, dataset).is_dir():
        raise Refused(422, [f"dataset = {dataset!r}: expected one of your uploaded datasets "
                            "(PUT /api/datasets/NAME)"])
    with _tenant_lock(who.tenant):  # the quota check and the insert as one step per tenant
        return _submit_checked(svc, who, ok, key)


def _submit_checked(svc: Service, who: Identity, ok: Any, key: str | None
                    ) -> tuple[dict[str, Any], bool]:
    if key is None or svc.store.job_by_key(who.tenant, key) is None:
        tenant = svc.store.tenant(who.tenant)
        quota_s = (tenant["quota_tile_hours"] if tenant else 0.0) * 3600.0
        use = svc.store.usage(who.tenant)
        need = max(1, ok.tiles) * ok.limit_s   # tiles "auto": at least one (checked again)
        if use["used_tile_s"] + use["committed_tile_s"] + need > quota_s:
            left = max(0.0, quota_s - use["used_tile_s"] - use["committed_tile_s"]) / 3600
            raise Refused(422, [f"tiles x limit_s = {ok.tiles} x {ok.limit_s:g} s = "
                                f"{need / 3600:.3g} tile-hours: expected at most the "
                                f"{left:.3g} tile-hours left of the quota"])
    job, created = svc.store.submit(who.tenant, who.token_id, {
        "kind": ok.kind, "spec": ok.spec, "tiles": ok.tiles, "limit_s": ok.limit_s,
        "priority": ok.priority}, key)
    return public(job), created


_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _tenant_lock(tenant: str) -> threading.Lock:
    """One lock per tenant: concurrent submissions cannot both pass the quota check. (The API
    is one server process; worker hosts never submit.)"""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(tenant, threading.Lock())


def get(svc: Service, who: Identity, job_id: str) -> dict[str, Any]:
    return public(_own(svc, who, job_id))


def listing(svc: Service, who: Identity, limit: int = 200) -> list[dict[str, Any]]:
    if not 1 <= limit <= 100_000:
        raise Refused(422, [f"limit = {limit}: expected 1 to 100000 jobs"])
    return [public(j) for j in svc.store.jobs(who.tenant, limit)]


def cancel(svc: Service, who: Identity, job_id: str) -> dict[str, Any]:
    _writer(who)
    job = _own(svc, who, job_id)
    import time

    if job.state == "queued":
        svc.store.transition(who.tenant, job.id, ("queued",), "cancelled", actor=who.token_id,
                             finished_at=time.time(), reason="cancelled")
    elif job.state in ("running", "preempting", "sizing"):
        svc.store.transition(who.tenant, job.id, ("running", "preempting", "sizing"),
                             "cancelling",
                             actor=who.token_id)
    return public(_own(svc, who, job_id))


def logs(svc: Service, who: Identity, job_id: str, offset: int) -> dict[str, Any]:
    """Log text from byte `offset` (at most 64 KiB), the next offset, and whether it is over."""
    job = _own(svc, who, job_id)
    path = svc.controller.job_dir(who.tenant, job.id) / "log.txt"
    text, end = "", offset
    if path.is_file():
        with path.open("rb") as f:
            f.seek(max(0, offset))
            chunk = f.read(65536)
        text, end = chunk.decode(errors="replace"), max(0, offset) + len(chunk)
    return {"text": text, "offset": end, "done": job.state not in ACTIVE}


def metrics(svc: Service, who: Identity, job_id: str) -> list[dict[str, Any]]:
    job = _own(svc, who, job_id)
    path = svc.controller.job_dir(who.tenant, job.id) / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines()[-5000:]:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written
    return out


def artifact(svc: Service, who: Identity, job_id: str, name: str) -> Path:
    """The path of one of the job's artifacts; only the names in ARTIFACTS exist."""
    job = _own(svc, who, job_id)
    if name not in ARTIFACTS:
        raise Refused(404, f"no artifact '{name[:64]}' (artifacts: {', '.join(ARTIFACTS)})")
    path = svc.controller.job_dir(who.tenant, job.id) / name
    if not path.is_file():
        raise Refused(404, f"artifact '{name}' does not exist yet")
    return path


def usage(svc: Service, who: Identity) -> dict[str, Any]:
    tenant = svc.store.tenant(who.tenant) or {}
    use = svc.store.usage(who.tenant)
    return {"tenant": who.tenant, "role": who.role,
            "quota_tile_hours": tenant.get("quota_tile_hours", 0.0),
            "used_tile_hours": use["used_tile_s"] / 3600,
            "committed_tile_hours": use["committed_tile_s"] / 3600}


def machine(svc: Service, who: Identity) -> dict[str, Any]:
    """The tile map: own jobs by id, other tenants' only as "other" (no ids, no names)."""
    tiles = []
    active = svc.store.active()
    for job in active:
        if job.rect is None:
            continue
        mine = job.tenant == who.tenant
        tiles.append({"rect": job.rect, "job": job.id if mine else None,
                      "tenant": job.tenant if mine else "other", "state": job.state})
    queued = sum(1 for j in active if j.state == "queued")
    return {"system": svc.system, "rows": svc.machine.rows, "cols": svc.machine.cols,
            "allocations": tiles, "queued": queued}


def upload_dataset(svc: Service, who: Identity, name: str, zip_path: Path) -> dict[str, Any]:
    """Unpack an uploaded zip of train/ and val/ clip sets as the tenant's dataset `name`."""
    _writer(who)
    try:
        datasets.check_name(name)
        with _tenant_lock(who.tenant):
            counts = datasets.unpack(zip_path, datasets.folder(svc.data, who.tenant, name))
    except datasets.BadUpload as err:
        raise Refused(422, [str(err)]) from None
    svc.store.log(who.tenant, who.token_id, "dataset.upload", name,
                  f"{counts['files']} files, {counts['bytes']} bytes")
    return {"name": name, **counts}


def list_datasets(svc: Service, who: Identity) -> list[str]:
    root = svc.data / "datasets" / who.tenant
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  ) if root.is_dir() else []


def audit_log(svc: Service, who: Identity) -> list[dict[str, Any]]:
    if who.role != "admin":
        raise Refused(403, "the audit log needs an admin token")
    return svc.store.audit_log(who.tenant)
