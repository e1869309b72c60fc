"""Client verbs of the training service, over HTTP only (`dojo.client`):

    dojo submit train mlp --tiles 2 --steps 20 [--wait]     prints the job id
    dojo jobs | dojo logs JOB [-f] | dojo cancel JOB | dojo usage

`--server` (default $DOJO_SERVER or http://127.0.0.1:8600); the token comes from DOJO_TOKEN or
~/.config/dojo/token. `--timeout-s` (default $DOJO_TIMEOUT_S or 30) bounds each request: a
server that accepts the connection and never answers is one line after it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from dojo.cli.common import integer, number, parse_sets, print_json

DEFAULT_SERVER = "http://127.0.0.1:8600"
DEFAULT_TIMEOUT_S = 30.0  # seconds one request may wait for the server's answer


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit a job to a dojo service",
                       description="Submit a simulate, plan or train job; prints its id.")
    _server(p)
    p.add_argument("kind", choices=("simulate", "plan", "train"))
    p.add_argument("model", help="zoo model name (or file.py:factory where the server allows)")
    p.add_argument("--tiles", type=integer, default=1, help="tiles to allocate (default 1)")
    p.add_argument("--plan", default="auto")
    p.add_argument("--batch", type=integer, default=None)
    p.add_argument("--seq", type=integer, default=None)
    p.add_argument("--steps", type=integer, default=None, help="train: optimizer steps")
    p.add_argument("--limit-s", type=number, default=600.0, help="wall-time limit (seconds)")
    p.add_argument("--priority", type=integer, default=0, help="1: urgent (admin tokens)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--idempotency-key", default=None, help="resubmitting returns the same job")
    p.add_argument("--wait", action="store_true", help="wait until the job is over")
    p.set_defaults(run=run_submit)
    for name, helptext, fn in (("jobs", "list your jobs on a dojo service", run_jobs),
                               ("usage", "your tenant's quota and usage", run_usage)):
        q = sub.add_parser(name, help=helptext, description=helptext)
        _server(q)
        q.set_defaults(run=fn)
    lg = sub.add_parser("logs", help="a job's log", description="Print a job's log.")
    _server(lg)
    lg.add_argument("job")
    lg.add_argument("-f", "--follow", action="store_true", help="until the job is over")
    lg.set_defaults(run=run_logs)
    c = sub.add_parser("cancel", help="cancel a job", description="Cancel a queued or running job.")
    _server(c)
    c.add_argument("job")
    c.set_defaults(run=run_cancel)


def _server(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=os.environ.get("DOJO_SERVER", DEFAULT_SERVER),
                   help=f"service URL (default $DOJO_SERVER or {DEFAULT_SERVER})")
    p.add_argument("--timeout-s", default=os.environ.get("DOJO_TIMEOUT_S", DEFAULT_TIMEOUT_S),
                   help="seconds each request waits for the server's answer (default "
                   f"$DOJO_TIMEOUT_S or {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _client(args: argparse.Namespace) -> Any:
    import math

    from dojo.client import Client
    from dojo.config import ascii_float
    from dojo.errors import ConfigError

    given = "DOJO_TIMEOUT_S" if args.timeout_s == os.environ.get("DOJO_TIMEOUT_S") \
        else "--timeout-s"
    timeout_s = ascii_float(str(args.timeout_s))
    if timeout_s is None:
        timeout_s = math.nan
    if not (math.isfinite(timeout_s) and 0 < timeout_s <= 86400):
        raise ConfigError(given, "timeout_s", args.timeout_s, "seconds, > 0 and <= 86400")
    return Client(args.server, timeout_s=timeout_s)


def check_submit(args: argparse.Namespace) -> None:
    """What the client can refuse without asking the server (which checks everything again)."""
    import math

    from dojo.errors import ConfigError

    for key in ("tiles", "batch", "seq", "steps"):
        value = getattr(args, key)
        if value is not None and value < 1:
            raise ConfigError(f"--{key}", key, value, "a whole number >= 1")
    if not (math.isfinite(args.limit_s) and args.limit_s > 0):
        raise ConfigError("--limit-s", "limit_s", args.limit_s, "a number of seconds > 0")
    if args.priority not in (0, 1):
        raise ConfigError("--priority", "priority", args.priority, "0 or 1")
    key = args.idempotency_key
    if key is not None and not (key and key.isascii() and key.isprintable() and " " not in key):
        # sent as an HTTP header, whose values are visible ASCII (RFC 9110, field-vchar): 'é'
        # or a bidi override was a UnicodeEncodeError traceback
        raise ConfigError("--idempotency-key", "idempotency_key", key, "visible ASCII "
                          "characters, no spaces (it is sent as an HTTP header)")


def run_submit(args: argparse.Namespace) -> int:
    check_submit(args)
    spec: dict[str, Any] = {"kind": args.kind, "model": args.model, "tiles": args.tiles,
                            "plan": args.plan, "limit_s": args.limit_s,
                            "priority": args.priority}
    for key in ("batch", "seq", "steps"):
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    if args.set:
        spec["set"] = parse_sets(args.set)
    client = _client(args)
    job = client.submit(spec, args.idempotency_key)
    if args.wait:
        job = client.wait(job["id"], timeout_s=args.limit_s * 3 + 60)
    if args.json:
        print_json(job)
    else:
        print(job["id"])
        if args.wait:
            print(f"{job['state']}{': ' + job['reason'] if job['reason'] else ''}",
                  file=sys.stderr)
    return 0 if job["state"] != "failed" else 1


def run_jobs(args: argparse.Namespace) -> int:
    jobs = _client(args).jobs()
    if args.json:
        print_json(jobs)
        return 0
    print(f"{'id':<17} {'kind':<9} {'state':<11} {'tiles':>5} {'runs':>4}  model / reason")
    for j in jobs:
        note = j["reason"] or j["spec"].get("model", "")
        print(f"{j['id']:<17} {j['kind']:<9} {j['state']:<11} {j['tiles']:>5} {j['runs']:>4}  "
              f"{note}")
    return 0


def run_usage(args: argparse.Namespace) -> int:
    use = _client(args).usage()
    if args.json:
        print_json(use)
    else:
        print(f"tenant {use['tenant']} ({use['role']}): quota {use['quota_tile_hours']:g} "
              f"tile-hours, used {use['used_tile_hours']:.4g}, committed to active jobs "
              f"{use['committed_tile_hours']:.4g}")
    return 0


def run_logs(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.follow:
        for text in client.follow(args.job):
            sys.stdout.write(text)
            sys.stdout.flush()
    else:
        sys.stdout.write(client.logs(args.job)["text"])
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    job = _client(args).cancel(args.job)
    print(json.dumps(job) if args.json else f"{job['id']} {job['state']}")
    return 0
