"""Load on the training service, bounded and on loopback: 50 clients submit and poll for 60 s.

    python bench/bench_service.py [--clients 50] [--seconds 60] [--tenants 5] [--db URL]

Starts `dojo serve --hold` (jobs are queued, none started: this measures the API and the store)
on a free loopback port with a temporary data folder, creates the tenants, runs
`dojo.service.loadtest.run` and prints a markdown table: throughput, p50 / p99 latency per
operation, status counts, and jobs lost or duplicated (both must be 0).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dojo.service.auth import new_token
from dojo.service.loadtest import run
from dojo.service.server import open_store


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--tenants", type=int, default=5)
    ap.add_argument("--db", default=None,
                    help="PostgreSQL URL (default SQLite); the run uses a schema of its own")
    args = ap.parse_args()
    schema = f"load_{os.getpid()}"
    if args.db:
        _schema(args.db, f'CREATE SCHEMA "{schema}"')
        args.db += ("&" if "?" in args.db else "?") + f"options=-csearch_path%3D{schema}"
    try:
        return _bench(args)
    finally:
        if args.db:
            _schema(args.db, f'DROP SCHEMA "{schema}" CASCADE')


def _schema(url: str, sql: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine("postgresql+psycopg://" + url.split("://", 1)[1].split("?")[0])
    with engine.begin() as c:
        c.execute(sa.text(sql))
    engine.dispose()


def _bench(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        store = open_store(data, args.db)
        tokens = []
        for i in range(args.tenants):
            tid, token, digest = new_token()
            store.create_tenant(f"load{i}-{os.getpid()}", 1e9, tid, "member", digest)
            tokens.append(token)
        store.close()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "dojo.cli.main", "serve", "--hold", "--data", tmp,
               "--port", str(port), "--rate-limit", "100000"]
        if args.db:
            cmd += ["--db", args.db]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait(port)
            r = run(f"http://127.0.0.1:{port}", tokens, args.clients, args.seconds)
        finally:
            server.terminate()
            server.wait(60)
    print(f"{r['clients']} clients, {r['seconds']:.0f} s, store "
          f"{'PostgreSQL' if args.db else 'SQLite'}: {r['requests']} requests, "
          f"{r['throughput_rps']:.0f} requests/s; {r['acknowledged']} submissions "
          f"acknowledged, {r['listed']} jobs listed, lost {r['lost']}, duplicated "
          f"{r['duplicated']}; status {r['status']}\n")
    print("| operation | requests | p50 (ms) | p99 (ms) |\n|---|---|---|---|")
    for op, v in r["latency_ms"].items():
        print(f"| {op} | {v['n']} | {v['p50']:.1f} | {v['p99']:.1f} |")
    return 0 if r["lost"] == 0 and r["duplicated"] == 0 else 1


def _wait(port: int) -> None:
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("server did not start")


if __name__ == "__main__":
    sys.exit(main())
