"""Concurrent clients on loopback (a short run of bench/bench_service.py's load): every
acknowledged submission is listed exactly once, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("httpx")

from dojo.service.loadtest import run

from .procs import Server, make_tenant


@pytest.mark.slow
def test_concurrent_clients_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    tokens = [make_tenant(tmp_path, f"t{i}") for i in range(3)]
    with Server(tmp_path, "--hold", "--rate-limit", "100000") as server:
        report = run(server.url, tokens, clients=12, seconds=8.0)
    assert report["acknowledged"] > 50
    assert report["lost"] == 0 and report["duplicated"] == 0
    assert report["listed"] == report["acknowledged"]
    assert set(report["status"]) <= {200, 201}, report["status"]
