"""The HTTP API (FastAPI; OpenAPI at /docs) and the web console at /.

Routes are thin (style rule 14): parse, authenticate, call one function of `ops`, return. The
body of a submission is read raw, so an oversized body is 413 and malformed JSON 400 before any
parsing; a tenant that floods the API gets 429 from a per-tenant token bucket.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations at runtime,
# and `Who` is local to `create_app`.

import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from dojo.config import load_json, whole_number
from dojo.errors import DojoError
from dojo.service import datasets, ops
from dojo.service.auth import Identity, Verifier
from dojo.service.ops import Refused, Service

MAX_BODY = 64 * 1024
CONSOLE = Path(__file__).parent / "console"


class RateLimit:
    """A token bucket per tenant: `rate` requests per second, bursts of `burst`."""

    def __init__(self, rate: float = 50.0, burst: float = 200.0) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, tenant: str, now: float) -> bool:
        with self._lock:
            level, last = self._buckets.get(tenant, (self.burst, now))
            level = min(self.burst, level + (now - last) * self.rate)
            ok = level >= 1.0
            self._buckets[tenant] = (level - 1.0 if ok else level, now)
            return ok


def create_app(svc: Service, rate: RateLimit | None = None) -> FastAPI:
    app = FastAPI(title="dojo service", version="1",
                  description="Multi-tenant Dojo training service: jobs, tiles, tenants.")
    verifier = Verifier(svc.store.token)
    limiter = rate or RateLimit()

    @app.exception_handler(Refused)
    async def refused(request: Request, err: Refused) -> JSONResponse:
        return JSONResponse({"detail": err.detail}, status_code=err.status)

    def identity(authorization: Annotated[str | None, Header()] = None) -> Identity:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Refused(401, "missing bearer token (Authorization: Bearer dojo_...)")
        who = verifier.check(token.strip())
        if who is None:
            raise Refused(401, "invalid or expired token")
        if not limiter.allow(who.tenant, time.monotonic()):
            raise Refused(429, "rate limit: too many requests from this tenant; retry shortly")
        return who

    Who = Annotated[Identity, Depends(identity)]

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "system": svc.system}

    @app.post("/api/jobs", status_code=201)
    async def submit(request: Request, who: Who, response: Response,
                     idempotency_key: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        body = await _json_body(request)
        job, created = ops.submit(svc, who, body, idempotency_key)
        if not created:
            response.status_code = 200
        return job

    @app.get("/api/jobs")
    def jobs(who: Who, limit: int = 200) -> list[dict[str, Any]]:
        return ops.listing(svc, who, limit)

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str, who: Who) -> dict[str, Any]:
        return ops.get(svc, who, job_id)

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: str, who: Who) -> dict[str, Any]:
        return ops.cancel(svc, who, job_id)

    @app.get("/api/jobs/{job_id}/logs")
    def logs(job_id: str, who: Who, offset: int = 0) -> dict[str, Any]:
        return ops.logs(svc, who, job_id, offset)

    @app.get("/api/jobs/{job_id}/metrics")
    def metrics(job_id: str, who: Who) -> list[dict[str, Any]]:
        return ops.metrics(svc, who, job_id)

    @app.get("/api/jobs/{job_id}/artifacts/{name}")
    def artifact(job_id: str, name: str, who: Who) -> FileResponse:
        return FileResponse(ops.artifact(svc, who, job_id, name))

    @app.get("/api/usage")
    def usage(who: Who) -> dict[str, Any]:
        return ops.usage(svc, who)

    @app.get("/api/machine")
    def machine(who: Who) -> dict[str, Any]:
        return ops.machine(svc, who)

    @app.put("/api/datasets/{name}")
    async def upload(name: str, request: Request, who: Who) -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "upload.zip"
            await _save_body(request, path, datasets.MAX_UPLOAD)
            return await run_in_threadpool(ops.upload_dataset, svc, who, name, path)

    @app.get("/api/datasets")
    def list_datasets(who: Who) -> list[str]:
        return ops.list_datasets(svc, who)

    @app.get("/api/audit")
    def audit(who: Who) -> list[dict[str, Any]]:
        return ops.audit_log(svc, who)

    app.mount("/", StaticFiles(directory=CONSOLE, html=True), name="console")
    return app


async def _save_body(request: Request, path: Path, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and (whole_number(declared) or 0) > limit:
        raise Refused(413, f"body of {declared} bytes: expected at most {limit}")
    size = 0
    with path.open("wb") as f:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Refused(413, f"body over {limit} bytes")
            f.write(chunk)


async def _json_body(request: Request) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and (whole_number(declared) or 0) > MAX_BODY:
        raise Refused(413, f"body of {declared} bytes: expected at most {MAX_BODY}")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise Refused(413, f"body over {MAX_BODY} bytes")
    try:
        return load_json(raw, "request body")
    except DojoError as err:  # bad syntax, not UTF-8, nested past the parser's recursion
        raise Refused(400, f"malformed JSON: {err}") from None
