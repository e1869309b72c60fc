"""A bounded load test of a running server, on loopback: `clients` threads submit and poll for
`seconds`, then every acknowledged submission is checked against the tenants' job lists.

Each client submits a job with a fresh Idempotency-Key (resending the same key after an error or
a timeout, as a careful client does), reads it back, and lists its jobs every tenth round. The
report: requests, throughput, p50 / p99 latency per operation, status counts, and the jobs lost
(acknowledged but not listed, or listed under another id) and duplicated (one key, two jobs).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from typing import Any

SPEC = {"kind": "simulate", "model": "mlp", "tiles": 1, "limit_s": 60}


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def run(url: str, tokens: list[str], clients: int = 50, seconds: float = 60.0) -> dict[str, Any]:
    """Drive the server at `url` (its jobs are best held: `dojo serve --hold`)."""
    import httpx

    lat: dict[str, list[float]] = defaultdict(list)
    status: Counter[int] = Counter()
    acked: dict[tuple[int, str], str] = {}   # (tenant index, key) -> job id
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def timed(op: str, call: Any) -> Any:
        t0 = time.perf_counter()
        try:
            r = call()
        except httpx.HTTPError:
            with lock:
                status[0] += 1
            return None
        with lock:
            lat[op].append(time.perf_counter() - t0)
            status[r.status_code] += 1
        return r

    def client(i: int) -> None:
        tenant = i % len(tokens)
        auth = {"Authorization": f"Bearer {tokens[tenant]}"}
        with httpx.Client(base_url=url, headers=auth, timeout=30.0) as h:
            n = 0
            while time.monotonic() < end:
                key = f"c{i}-{n}"
                job = None
                for _ in range(3):
                    r = timed("submit", lambda k=key: h.post(
                        "/api/jobs", json=SPEC, headers={"Idempotency-Key": k}))
                    if r is not None and r.status_code in (200, 201):
                        job = r.json()["id"]
                        with lock:
                            acked[(tenant, key)] = job
                        break
                if job is not None:
                    timed("get", lambda j=job: h.get(f"/api/jobs/{j}"))
                if n % 10 == 0:
                    timed("list", lambda: h.get("/api/jobs?limit=50"))
                n += 1

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    lost, duplicated, listed = _check(url, tokens, acked)
    total = sum(len(v) for v in lat.values())
    return {"clients": clients, "seconds": wall, "requests": total,
            "throughput_rps": total / wall if wall else 0.0,
            "latency_ms": {op: {"p50": 1e3 * _quantile(v, 0.5), "p99": 1e3 * _quantile(v, 0.99),
                                "n": len(v)} for op, v in sorted(lat.items())},
            "status": dict(sorted(status.items())), "acknowledged": len(acked),
            "listed": listed, "lost": lost, "duplicated": duplicated}


def _check(url: str, tokens: list[str], acked: dict[tuple[int, str], str]
           ) -> tuple[int, int, int]:
    import httpx

    lost = duplicated = listed = 0
    for tenant, token in enumerate(tokens):
        r = httpx.get(f"{url}/api/jobs?limit=100000", timeout=120.0,
                      headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
        jobs = r.json()
        listed += len(jobs)
        by_key: dict[str, list[str]] = defaultdict(list)
        for j in jobs:
            by_key[j["idempotency_key"]].append(j["id"])
        duplicated += sum(len(ids) - 1 for ids in by_key.values())
        for (t, key), job in acked.items():
            if t == tenant and by_key.get(key) != [job]:
                lost += 1
    return lost, duplicated, listed
