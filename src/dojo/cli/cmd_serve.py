"""`dojo serve` (the training service) and `dojo admin tenant create` (its tenants).

    dojo serve [--data DIR] [--db URL] [--system v1|exapod|FILE] [--host H] [--port P]
    dojo admin tenant create NAME --quota-tile-hours X [--role admin] [--data DIR] [--db URL]
    dojo worker --db URL --data DIR [--name H]       (another worker host)

The service's packages (FastAPI, SQLAlchemy...) are imported inside `run`, so `dojo --help`
never loads them; install them with `pip install -e '.[service]'`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from dojo.cli.common import integer, number

DEFAULT_DATA = "dojo-data"
# Stated bounds on the service's numbers, so that no typed value reaches the store or the
# scheduler's arithmetic as inf (quota x 3600, the fair-share weights' sum) or as a loop bound.
# Quotas run from one tile-second to 10^9 tile-hours (an ExaPOD's 120 tiles for about 950
# years): the fair-share weight of the smallest over the sum of the largest stays a normal float
# (a quota of 1e-320 made its share 0.0 and the scheduler's division fail every pass).
MIN_QUOTA_TILE_HOURS = 1 / 3600
MAX_QUOTA_TILE_HOURS = 1e9
QUOTA_RANGE = f"from 1/3600 (one tile-second) to {MAX_QUOTA_TILE_HOURS:,.0f} tile-hours"
MAX_EXPIRES_S = 100 * 365.25 * 86400  # a token valid for a century is one that never expires
MAX_ATTEMPTS = 100  # each attempt reruns the job from its start (or its last checkpoint)
MAX_RATE_PER_S = 1e6  # requests per second per tenant; past it the limit limits nothing
MAX_WORKER_CPU_S = 10**10  # CPU seconds of one job's worker: a year on 317 cores
MAX_WORKER_MEMORY_GB = 2**20  # a worker's address space: 1 PiB, past any one host's memory


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the multi-tenant training service (HTTP API, console)",
                       description="Serve the HTTP API (OpenAPI at /docs) and the web console "
                       "(/) over a durable store, scheduling jobs on the system's tiles.")
    _store_args(p)
    p.add_argument("--system", default="v1", help="v1, exapod or a system .toml (default v1)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=integer, default=8600)
    p.add_argument("--allow-factories", action="store_true",
                   help="accept models given as file.py:factory (run only in sandboxed workers)")
    p.add_argument("--worker-cpu-s", type=integer, default=3600, help="CPU seconds per worker")
    p.add_argument("--worker-memory-gb", type=number, default=8.0, help="memory per worker")
    p.add_argument("--max-attempts", type=integer, default=3,
                   help="runs of a job whose worker dies before it is failed (default 3)")
    p.add_argument("--rate-limit", type=number, default=50.0,
                   help="requests per second per tenant, bursts of 4x (default 50)")
    p.add_argument("--hold", action="store_true",
                   help="accept and queue jobs but start none (maintenance, load tests)")
    p.add_argument("--no-local-workers", action="store_true",
                   help="run no jobs here: only `dojo worker` hosts claim them")
    p.set_defaults(run=run_serve)

    w = sub.add_parser("worker", help="a worker host for a dojo service (claims and runs jobs)",
                       description="Join a service as a worker host: claim the jobs its "
                       "scheduler placed, through the shared database, and run them here.")
    _store_args(w)
    w.add_argument("--system", default="v1", help="the server's --system")
    w.add_argument("--name", default=None, help="host name (default: this machine's, + pid)")
    w.add_argument("--slots", type=integer, default=None,
                   help="jobs run at once on this host, 1 to the system's tile count "
                   "(default: its CPU count, at most the tile count)")
    w.add_argument("--worker-cpu-s", type=integer, default=3600, help="CPU seconds per worker")
    w.add_argument("--worker-memory-gb", type=number, default=8.0, help="memory per worker")
    w.add_argument("--max-attempts", type=integer, default=3,
                   help="runs of a job whose worker dies before it is failed (default 3)")
    w.add_argument("--addr", default="127.0.0.1",
                   help="this host's address for the ranks of jobs that span hosts "
                   "(torch.distributed rendezvous; default 127.0.0.1)")
    w.set_defaults(run=run_worker)

    a = sub.add_parser("admin", help="administer the service's tenants and tokens",
                       description="Create tenants (prints the API token once) and tokens.")
    asub = a.add_subparsers(dest="what", metavar="WHAT", required=True)
    t = asub.add_parser("tenant", help="tenants").add_subparsers(dest="verb", required=True)
    c = t.add_parser("create", help="create a tenant and print its first token (once)")
    c.add_argument("name")
    c.add_argument("--quota-tile-hours", type=number, required=True,
                   help=f"tile-hours the tenant may use, {QUOTA_RANGE}")
    c.add_argument("--role", default="admin", choices=("admin", "member", "read-only"))
    _store_args(c)
    tok = asub.add_parser("token", help="tokens").add_subparsers(dest="verb", required=True)
    tc = tok.add_parser("create", help="another token for a tenant (printed once)")
    tc.add_argument("tenant")
    tc.add_argument("--role", default="member", choices=("admin", "member", "read-only"))
    tc.add_argument("--expires-s", type=number, default=None, help="valid for this many seconds")
    _store_args(tc)
    a.set_defaults(run=run_admin)


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=os.environ.get("DOJO_DATA", DEFAULT_DATA),
                   help=f"data folder: SQLite store, job folders (default $DOJO_DATA or "
                   f"./{DEFAULT_DATA})")
    p.add_argument("--db", default=os.environ.get("DOJO_DB"),
                   help="database URL, e.g. postgresql://host/db (default SQLite in --data)")


def _need_service(args: argparse.Namespace) -> None:
    """The service's extra is installed and `--data` names a folder: '' is the current folder
    (the store and job folders among the user's files), ' ' a folder named by a blank."""
    from dojo.errors import ConfigError, DojoError

    if not args.data.strip():
        raise ConfigError("--data", "data", args.data, "a folder path for the store and job "
                          "folders, not blank")
    try:
        import fastapi  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as err:
        raise DojoError(f"the service needs its extra: pip install -e '.[service]' "
                        f"({err.name} is missing)") from None


def run_serve(args: argparse.Namespace) -> int:
    from dojo.errors import ConfigError

    _need_service(args)
    from dojo.service.server import Settings, serve

    if not 0 < args.port < 65536:
        raise ConfigError("--port", "port", args.port, "a TCP port from 1 to 65535")
    if not 0 < args.rate_limit <= MAX_RATE_PER_S:
        raise ConfigError("--rate-limit", "rate_limit", args.rate_limit,
                          f"requests per second > 0 and at most {MAX_RATE_PER_S:,.0f}")
    limits = _limits(args)
    from dojo.hardware import load_system
    from dojo.service.mesh import machine_of
    from dojo.service.storecheck import check_listen

    machine_of(load_system(args.system))  # before the store is made: a bad system writes nothing
    check_listen(args.host, args.port)  # before the store too: a bad --host or a busy port
    serve(Settings(data=Path(args.data), db=args.db, system=args.system, host=args.host,
                   port=args.port, allow_factories=args.allow_factories, limits=limits,
                   hold=args.hold, rate_per_s=args.rate_limit,
                   local_workers=not args.no_local_workers))
    return 0


def _limits(args: argparse.Namespace) -> Any:
    from dojo.errors import ConfigError
    from dojo.service.agent import Limits

    if not 1 <= args.max_attempts <= MAX_ATTEMPTS:
        raise ConfigError("--max-attempts", "max_attempts", args.max_attempts,
                          f"from 1 to {MAX_ATTEMPTS} runs of a job")
    if not 1 <= args.worker_cpu_s <= MAX_WORKER_CPU_S:  # past 2^62 setrlimit failed every job
        raise ConfigError("--worker-cpu-s", "worker_cpu_s", args.worker_cpu_s,
                          f"at least 1 s, at most {MAX_WORKER_CPU_S:,} s (a year on 317 cores)")
    if not 0.25 <= args.worker_memory_gb <= MAX_WORKER_MEMORY_GB:
        raise ConfigError("--worker-memory-gb", "worker_memory_gb", args.worker_memory_gb,
                          f"at least 0.25 GB, at most {MAX_WORKER_MEMORY_GB:,} GB (1 PiB, past "
                          "any one host)")
    return Limits(cpu_s=args.worker_cpu_s, memory_bytes=int(args.worker_memory_gb * 2**30),
                  max_attempts=args.max_attempts)


def run_worker(args: argparse.Namespace) -> int:
    import logging
    import socket

    from dojo.errors import ConfigError

    _need_service(args)
    from dojo.hardware import load_system
    from dojo.service.agent import serve_host
    from dojo.service.mesh import machine_of
    from dojo.service.server import open_store

    limits = _limits(args)
    tiles = machine_of(load_system(args.system)).tiles  # a Dojo system with tiles, or one line
    slots = min(os.cpu_count() or 1, tiles) if args.slots is None else args.slots
    if not 1 <= slots <= tiles:  # each running job holds a tile: more slots are never used
        raise ConfigError("--slots", "slots", slots, f"from 1 to {tiles} jobs at a time (the "
                          f"tiles of --system {args.system}: no more jobs run at once)")
    name = args.name or f"{socket.gethostname()}-{os.getpid()}"
    store = open_store(Path(args.data), args.db)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        serve_host(store, Path(args.data).resolve(), args.system, name, limits, slots,
                   addr=args.addr)
    finally:
        store.close()
    return 0


def run_admin(args: argparse.Namespace) -> int:
    import time

    from dojo.errors import ConfigError, DojoError

    _need_service(args)
    from dojo.service.auth import new_token
    from dojo.service.server import open_store
    from dojo.service.store import Conflict

    if args.what == "tenant":  # checked before the store is opened: a bad value writes nothing
        if not args.name.replace("-", "").replace("_", "").isalnum() or len(args.name) > 64:
            raise ConfigError("NAME", "name", args.name, "letters, digits, - and _ (at most 64)")
        if not MIN_QUOTA_TILE_HOURS <= args.quota_tile_hours <= MAX_QUOTA_TILE_HOURS:
            raise ConfigError("--quota-tile-hours", "quota_tile_hours", args.quota_tile_hours,
                              QUOTA_RANGE)
    elif args.expires_s is not None and not 0 < args.expires_s <= MAX_EXPIRES_S:
        raise ConfigError("--expires-s", "expires_s", args.expires_s,
                          f"a number of seconds > 0 and at most {MAX_EXPIRES_S:.4g} (100 years)")
    elif not args.db and not (Path(args.data) / "dojo.db").is_file():  # made nothing to say so
        raise DojoError(f"no tenant '{args.tenant}' ({args.data} holds no store yet)")
    store = open_store(Path(args.data), args.db)
    token_id, token, digest = new_token()
    if args.what == "tenant":
        try:
            store.create_tenant(args.name, args.quota_tile_hours, token_id, args.role, digest)
        except Conflict:
            raise DojoError(f"tenant '{args.name}' exists already") from None
        print(f"tenant {args.name}: quota {args.quota_tile_hours:g} tile-hours", file=sys.stderr)
    else:
        if store.tenant(args.tenant) is None:
            raise DojoError(f"no tenant '{args.tenant}'")
        expires = time.time() + args.expires_s if args.expires_s else None
        store.add_token(args.tenant, token_id, args.role, digest, expires)
    print(f"{args.role} token (shown once, keep it; export DOJO_TOKEN=...):", file=sys.stderr)
    print(token)
    store.close()
    return 0
