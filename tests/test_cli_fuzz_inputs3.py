"""Bad inputs of issue 14's fourth round, under the contract of `test_cli_fuzz.py` (one error
line naming the flag or file, the value and what was expected; exit 2; no traceback; nothing
written). Each case checks those words, so a case refused some other way does not pass:

- counts bounded by the problem's structure, never by the size of the number typed:
  `worker --slots` at most the system's tiles (each running job holds one), `--max-attempts`,
  `inspect --top` in `plan --top`'s range (1 to 100);
- the service's numbers kept finite in its arithmetic: a tenant quota from one tile-second to
  10^9 tile-hours (1e308 made quota x 3600 inf; 1e-320 made the fair-share weight 0.0, and the
  scheduler's division failed every pass), `--rate-limit` and `--expires-s` bounded;
- the rest of the fourth round's fuzz findings (see each case's comment).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cli_fuzz_verbs import set_up
from test_cli_fuzz import one_line_test

SVC = ("--data", "svc")
WORKER = ("worker", *SVC, "--name", "h1")
TENANT = ("admin", "tenant", "create", "acme", *SVC, "--quota-tile-hours")
TOKEN = ("admin", "token", "create", "acme", *SVC, "--expires-s")
SERVE = ("serve", *SVC, "--port", "8698")
SYNTH = ("data", "synth", "--out", "s", "--clips", "1", "--frames", "2", "--size", "32x32",
         "--cameras", "1")
QUOTA = "expected from 1/3600 (one tile-second) to 1,000,000,000 tile-hours"
INSPECT_TOP = "expected from 0 to 100 (rows of the top-ops table, 0 for none"


def _none(root: Path) -> None:
    pass


def _clips(root: Path) -> None:
    set_up("clips", root)


def _system(body: str) -> Callable[[Path], None]:
    """s.toml: the shipped H100 cluster with `body` (TOML tables) over it."""
    def setup(root: Path) -> None:
        (root / "s.toml").write_text(f'extends = "h100-cluster"\nname = "s"\ntitle = "s"\n{body}')
    return setup


def _file(name: str, text: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        (root / name).write_text(text)
    return setup


def _script(root: Path) -> None:
    (root / "x.py").write_text("")


# (argv, environment, files to put in the case folder first, words the error must hold)
CASES: list[tuple[tuple[str, ...], dict[str, str], Callable[[Path], None], str]] = [
    # 1. worker --slots 10^14 (or the CPU count on a 6-tile V1) was accepted: a thread loop
    # polling for 10^14 jobs where at most one job per tile ever runs
    ((*WORKER, "--slots", "100000000000000"), {}, _none,
     "--slots: field 'slots' = 100000000000000: expected from 1 to 6 jobs at a time (the tiles "
     "of --system v1"),
    ((*WORKER, "--slots", "7"), {}, _none, "field 'slots' = 7: expected from 1 to 6 jobs"),
    ((*WORKER, "--system", "exapod", "--slots", "121"), {}, _none,
     "field 'slots' = 121: expected from 1 to 120 jobs"),
    ((*WORKER, "--max-attempts", "100000000000000"), {}, _none,
     "--max-attempts: field 'max_attempts' = 100000000000000: expected from 1 to 100 runs"),
    ((*SERVE, "--max-attempts", "101"), {}, _none, "field 'max_attempts' = 101: expected from 1"),
    # found by the random fuzz: 10^17 CPU-seconds (3 billion years) started the service
    ((*SERVE, "--worker-cpu-s", "100000000000000000"), {}, _none,
     "--worker-cpu-s: field 'worker_cpu_s' = 100000000000000000: expected at least 1 s, at most "
     "10,000,000,000 s"),
    ((*WORKER, "--worker-memory-gb", "4294967296"), {}, _none,
     "field 'worker_memory_gb' = 4294967296.0: expected at least 0.25 GB, at most 1,048,576 GB"),
    ((*SERVE, "--rate-limit", "1e308"), {}, _none,
     "--rate-limit: field 'rate_limit' = 1e+308: expected requests per second > 0 and at most "
     "1,000,000"),
    # 2. quotas: 1e308 tile-hours is inf tile-seconds; 1e-320 a fair-share weight of 0.0
    ((*TENANT, "1e308"), {}, _none, f"--quota-tile-hours: field 'quota_tile_hours' = 1e+308: "
     f"{QUOTA}"),
    ((*TENANT, "1000000001"), {}, _none, f"= 1000000001.0: {QUOTA}"),
    ((*TENANT, "1e-320"), {}, _none, f"= 1e-320: {QUOTA}"),
    ((*TENANT, "0.0001"), {}, _none, f"= 0.0001: {QUOTA}"),
    ((*TENANT, "inf"), {}, _none, f"= inf: {QUOTA}"),
    ((*TENANT, "nan"), {}, _none, f"= nan: {QUOTA}"),
    ((*TENANT, "-5"), {}, _none, f"= -5.0: {QUOTA}"),
    ((*TOKEN, "1e308"), {}, _none, "--expires-s: field 'expires_s' = 1e+308: expected a number "
     "of seconds > 0 and at most 3.156e+09 (100 years)"),
    # a blank --data put the store (dojo.db) among the current folder's files, or in ' '
    (("admin", "tenant", "create", "acme", "--quota-tile-hours", "5", "--data", ""), {}, _none,
     "--data: field 'data' = '': expected a folder path for the store and job folders, not "
     "blank"),
    (("admin", "tenant", "create", "acme", "--quota-tile-hours", "5", "--data", " "), {}, _none,
     "--data: field 'data' = ' ': expected a folder path"),
    (("worker", "--data", " "), {}, _none, "--data: field 'data' = ' ': expected a folder path"),
    # 3. inspect --top -1 and 10^20 were taken (0 prints no table, as documented)
    (("inspect", "mlp", "--top", "-1"), {}, _none, f"field 'top' = -1: {INSPECT_TOP}"),
    (("inspect", "mlp", "--top", "101"), {}, _none, f"field 'top' = 101: {INSPECT_TOP}"),
    (("inspect", "mlp", "--top", "100000000000000000000"), {}, _none,
     f"field 'top' = 100000000000000000000: {INSPECT_TOP}"),
    # 4. a single-valued flag given twice kept the last silently (--set and --plan refuse a key
    # twice): which system, which folder was meant?
    (("simulate", "mlp", "--system", "h100-cluster:8", "--system", "v1", "--batch", "8"), {},
     _none, "argument --system: given twice ('h100-cluster:8', then 'v1'): expected it once"),
    ((*SYNTH, "--out", "t"), {}, _none, "argument --out: given twice ('s', then 't')"),
    (("plan", "mlp", "--system", "h100-cluster:8", "--top", "5", "--top", "5"), {}, _none,
     "argument --top: given twice (5, then 5): expected it once"),
    # 5. a blank (whitespace) name made a clip set, a catalog or a split named ' '
    (("data", "synth", "--out", " ", *SYNTH[4:]), {}, _none,
     "--out: field 'out' = ' ': expected a folder path for the clip set, not blank"),
    ((*SYNTH, "--catalog", " "), {}, _none,
     "--catalog: field 'catalog' = ' ': expected a folder path, not blank"),
    ((*SYNTH, "--split", " "), {}, _none, "--split: field 'split' = ' ': expected a split name "
     "that is not blank"),
    ((*SYNTH, "--split", "a\tb"), {}, _none, "--split: field 'split' = 'a\\tb'"),
    (("data", "index", "clips", "--catalog", " "), {}, _clips,
     "--catalog: field 'catalog' = ' ': expected a folder path, not blank"),
    # and an output path ' ' was quoted as '' in its error
    (("simulate", "mlp", "--system", "h100-cluster:8", "--report", " "), {}, _none,
     "--report = ' ': expected a file path"),
    # 6. synth --seed 10^20 was taken where train, run and data mine refuse a seed past 2^63
    ((*SYNTH, "--seed", "100000000000000000000"), {}, _none,
     "field 'seed' = 100000000000000000000: expected a number <= 9.22337e+18"),
    # 7. run --timeout 1e308: an OverflowError traceback (timedelta) once the ranks started;
    # a script ran with it
    (("run", "--model", "mlp", "--steps", "1", "--timeout", "1e308"), {}, _none,
     "--timeout = 1e+308: expected a number of seconds > 0, at most 31536000 (a year)"),
    (("run", "--timeout", "1e308", "x.py"), {}, _script, "--timeout = 1e+308: expected a number"),
    # 8. run --system NAME:N with N not the plan's devices blamed a --devices never given
    (("run", "--model", "mlp", "--steps", "1", "--system", "h100-cluster:99999999999"), {},
     _none, "--system: field 'system' = 'h100-cluster:99999999999': expected no ':N', or :1: "
     "dojo run sizes the system to the plan's dp x tp x pp = 1 devices"),
    # 12. a system named with a line break or a blank: its tables and reports split or blank
    (("info", "x.toml"), {}, _file("x.toml", 'extends = "h100-cluster"\nname = "x\\ny"\n'),
     "x.toml: field 'name' = 'x\\ny': expected a non-empty string of printable characters on "
     "one line"),
    (("info", "x.toml"), {}, _file("x.toml", 'extends = "h100-cluster"\ntitle = " "\n'),
     "x.toml: field 'title' = ' ': expected a non-empty string"),
    # 11. a password in --server was echoed in the "cannot reach" error (and never used)
    (("jobs", "--server", "http://user:hunter2@127.0.0.1:9"), {"DOJO_TOKEN": "dojo_x"}, _none,
     "--server: field 'server' = 'http://***@127.0.0.1:9': expected an http:// or https:// URL "
     "like http://127.0.0.1:8600, without user:password@"),
    # 10. a memory pool's reserve at or past its size: a GPU of -1 GB free was simulated
    (("info", "s.toml"), {}, _system("[gpu.memory.hbm]\nbytes = 1\n"),
     "s.toml: field 'gpu.memory.hbm.reserved_bytes' = 1124073472.0: expected less than bytes = 1"),
    (("simulate", "mlp", "--system", "s.toml:8", "--batch", "8"), {},
     _system("[gpu.memory.hbm]\nreserved_bytes = 1e20\n"),
     "field 'gpu.memory.hbm.reserved_bytes' = 1e+20: expected less than bytes = 8.55208e+10"),
    # 9. train --catalog without --train-set was ignored (and ' ' with it)
    (("train", "occupancy", "--steps", "1", "--out", "run", "--catalog", "cat"), {}, _none,
     "--catalog: field 'catalog' = 'cat': expected a catalog folder that holds the --train-set "
     "version, given with --train-set"),
]


@pytest.fixture(autouse=True)
def _never_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value that slips through must fail the case, not listen or poll for ever."""
    from dojo.service import agent, server

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("the command started serving")

    monkeypatch.setattr(agent, "serve_host", started)
    monkeypatch.setattr(server, "serve", started)


test_bad_inputs_are_refused_in_one_line = one_line_test(CASES)
