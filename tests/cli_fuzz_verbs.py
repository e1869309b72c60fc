"""Slots of the service, client, catalog and eval verbs for `test_cli_fuzz.py` (its docstring
states the contract), with the bad-value classes only these verbs take.

Keys are verb paths as typed ("data query", "admin tenant create"); `test_every_command_is_fuzzed`
walks the parser, so a verb added without an entry here or there fails it. A command that would
listen or loop when a value slips through (`serve`, `worker`) runs out of process, killed at the
time limit; `serve`'s base line listens on a loopback port only if a bad value is accepted, which
fails the case either way.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path


@dataclass(frozen=True)
class Slot:
    """`flag` (None: the positional at `index` of `base`) and the bad classes it must refuse."""

    name: str
    flag: str | None
    classes: tuple[str, ...]
    index: int = 0


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]  # a valid command line that the slot's value is put into
    slots: tuple[Slot, ...]
    subprocess: bool = False  # run out of process (may start long work if a value slips)
    default_cases: int = 3  # fewer where each case starts a Python (~8 s)
    setup: str = ""  # "clips": a 1-clip set with its catalog at ./clips
    env: tuple[tuple[str, str], ...] = ()


def _pick(*choices: str) -> Callable[[random.Random], str]:
    return lambda r: r.choice(choices)


VERB_VALUES: dict[str, Callable[[random.Random], str]] = {
    "bad_sql": _pick("SELEC 1", "DROP VIEW clips", "COPY clips TO 'leak.csv'", "SELECT 1; SELECT 2",
                     "ATTACH 'x.db' AS x", "SELECT * FROM nosuch", "CREATE TABLE t AS SELECT 1",
                     "SELECT * FROM range(10000000000)", "INSTALL httpfs", "SET threads=1",
                     "EXPORT DATABASE 'exported'", "SELECT (", "'; DROP VIEW clips; --"),
    "bad_url": _pick("notaurl", "", "ftp://x/", "http://[::1", "http://127.0.0.1:99999",
                     "http://", "://x", "http://127.0.0.1:-1"),
    "no_server": _pick("http://127.0.0.1:9", "http://127.0.0.1:9/api/"),
    "bad_host": _pick("nosuchhost.invalid", "", "8.8.8.8", "999.1.1.1"),
    "bad_db": _pick("postgresql://nohost.invalid/x", "notaurl", "mysql://x/y",
                    "sqlite:////proc/dojo_fuzz/x.db", "postgresql://u:secret@nohost.invalid/x"),
    "bad_name": _pick("a/b", "a b", "x" * 65, "", "../x", "a;b"),
    "job_id": _pick("../../etc/passwd", "a b", "", "x%00y", "j" * 300),
    "gpu_system": _pick("a100-cluster", "h100-cluster:8", "cpu"),
    "slice_name": _pick("nosuch", "a b", "x;DROP"),
    "url_path": _pick("s3://nobucket/x", "memory://x", "foo://x/y"),  # where a local folder goes
}

SERVER = ("--server", "http://127.0.0.1:9")  # nothing listens: every case fails before a request
CLIENT_ENV = (("DOJO_TOKEN", "dojo_fuzz"), ("DOJO_CONFIG", "missing_config/token"))
SERVER_SLOT = Slot("--server", "--server", ("bad_url", "no_server"))
STORE_SLOTS = (Slot("--data", "--data", ("afile", "readonly_dir")),
               Slot("--db", "--db", ("bad_db",)))
# a limit setrlimit cannot hold failed every job at its start, not the command
WORKER_SLOTS = (Slot("--worker-memory-gb", "--worker-memory-gb", ("float_bad", "huge")),
                Slot("--worker-cpu-s", "--worker-cpu-s", ("zero", "negative", "huge")))

VERBS: dict[str, Command] = {
    "data check": Command(("data", "check", "clips"), (
        Slot("root", None, ("missing", "afile", "folder", "empty"), 2),
        Slot("--policy", "--policy", ("unknown", "empty")),
    ), setup="clips"),
    "data fps": Command(("data", "fps", "clips/clip_0000/front.mp4", "--seconds", "0.1"), (
        Slot("path", None, ("missing", "afile", "folder", "empty"), 2),
        Slot("--seconds", "--seconds", ("float_bad", "nonnumber", "huge")),
    ), setup="clips", subprocess=True, default_cases=1),
    "data index": Command(("data", "index", "clips", "--catalog", "cat2"), (
        Slot("root", None, ("missing", "afile", "folder", "empty"), 2),
        Slot("--catalog", "--catalog", ("afile", "readonly_dir")),
    ), setup="clips"),
    "data query": Command(("data", "query", "SELECT 1", "--catalog", "clips/catalog"), (
        Slot("sql", None, ("bad_sql",), 2),
        Slot("--catalog", "--catalog", ("missing", "afile", "folder")),
        Slot("--format", "--format", ("unknown", "empty")),
        Slot("--slices", "--slices", ("missing", "afile", "folder")),
        Slot("--slice", "--slice", ("slice_name",)),
    ), setup="clips"),
    "data mine": Command(("data", "mine", "adir", "--slice", "x", "--budget", "3", "--by",
                          "random"), (
        Slot("run", None, ("missing", "afile", "folder", "empty"), 2),
        Slot("--budget", "--budget", ("zero", "negative", "nonnumber", "empty")),
        Slot("--slices", "--slices", ("missing", "afile")),
        Slot("--by", "--by", ("unknown", "empty")),
        Slot("--seed", "--seed", ("negative", "nonnumber", "empty")),
    )),
    "eval": Command(("eval", "adir"), (
        Slot("run", None, ("missing", "empty", "afile", "folder"), 1),
        Slot("--slices", "--slices", ("missing", "afile", "empty")),
    )),
    "serve": Command(("serve", "--port", "8698", "--data", "svc"), (
        Slot("--port", "--port", ("zero", "negative", "huge", "nonnumber")),
        Slot("--host", "--host", ("bad_host",)),
        Slot("--system", "--system", ("unknown", "missing", "empty", "system_count",
                                      "gpu_system")),
        Slot("--max-attempts", "--max-attempts", ("zero", "negative", "nonnumber", "huge")),
        Slot("--rate-limit", "--rate-limit", ("float_bad",)),
        *WORKER_SLOTS,
        *STORE_SLOTS,
    ), subprocess=True, default_cases=2),
    "worker": Command(("worker", "--data", "svc", "--name", "h1"), (
        Slot("--slots", "--slots", ("zero", "negative", "nonnumber", "huge")),
        Slot("--max-attempts", "--max-attempts", ("zero", "huge")),
        Slot("--data", "--data", ("empty",)),
        Slot("--system", "--system", ("unknown", "missing", "empty", "gpu_system")),
        *WORKER_SLOTS,
        *STORE_SLOTS,
    ), subprocess=True, default_cases=1),
    "admin tenant create": Command(("admin", "tenant", "create", "acme", "--quota-tile-hours",
                                    "5", "--data", "svc"), (
        Slot("name", None, ("bad_name",), 3),
        Slot("--quota-tile-hours", "--quota-tile-hours", ("float_bad", "nonnumber", "huge")),
        Slot("--data", "--data", ("empty",)),
        Slot("--role", "--role", ("unknown",)),
        *STORE_SLOTS,
    )),
    "admin token create": Command(("admin", "token", "create", "acme", "--data", "svc"), (
        Slot("tenant", None, ("unknown",), 3),
        Slot("--expires-s", "--expires-s", ("float_bad", "nonnumber", "huge")),
        Slot("--role", "--role", ("unknown",)),
        *STORE_SLOTS,
    )),
    "submit": Command(("submit", "train", "mlp", *SERVER), (
        Slot("--tiles", "--tiles", ("zero", "negative", "nonnumber")),
        Slot("--steps", "--steps", ("zero", "negative", "nonnumber")),
        Slot("--batch", "--batch", ("zero", "negative")),
        Slot("--limit-s", "--limit-s", ("float_bad",)),
        Slot("--priority", "--priority", ("negative", "huge")),
        Slot("--set", "--set", ("set_form",)),
        Slot("kind", None, ("unknown",), 1),
        SERVER_SLOT,
    ), env=CLIENT_ENV),
    "jobs": Command(("jobs", *SERVER), (SERVER_SLOT,), env=CLIENT_ENV, default_cases=2),
    "usage": Command(("usage", *SERVER), (SERVER_SLOT,), env=CLIENT_ENV, default_cases=2),
    "logs": Command(("logs", "j1", *SERVER), (Slot("job", None, ("job_id",), 1), SERVER_SLOT),
                    env=CLIENT_ENV, default_cases=2),
    "cancel": Command(("cancel", "j1", *SERVER), (Slot("job", None, ("job_id",), 1),
                                                  SERVER_SLOT), env=CLIENT_ENV, default_cases=2),
}


@cache
def _clips_source() -> Path:
    """A 1-clip, 1-camera set with its catalog, made once per session (~1 s)."""
    import tempfile

    from dojo.data.synth import SynthConfig, synthesize

    root = Path(tempfile.mkdtemp(prefix="dojo_fuzz_")) / "clips"
    synthesize(root, SynthConfig(clips=1, cameras=1, frames=2, width=32, height=32, grid=8))
    return root


def set_up(kind: str, cwd: Path) -> None:
    """Put the `setup` a command's base line needs into its case folder."""
    if kind == "clips":
        shutil.copytree(_clips_source(), cwd / "clips")
