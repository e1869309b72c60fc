"""`dojo data query` is bounded by the catalog's structure, not by the numbers in a query: more
rows than `MAX_ROWS` or a run past `QUERY_LIMIT_S` is one line, exit 2, nothing written."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import dojo.data.query as query
from dojo.cli.main import main


@pytest.mark.parametrize(("sql", "limit_s", "words"), [
    # the row cap, not the clock: fetching and sizing 10^6 rows takes about 1.5 s under load
    ("SELECT * FROM range(10000000000)", 15.0, "more than 1,000,000 rows"),
    ("SELECT count(*) FROM range(10000000000000)", 1.0, "ran past 1 s"),  # hours without it
])
def test_query_bounds(sql: str, limit_s: float, words: str, tiny_set: Path, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(query, "QUERY_LIMIT_S", limit_s)
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    assert main(["data", "query", sql, "--catalog", str(tiny_set / "catalog")]) == 2
    assert time.monotonic() - start < 20
    err = capsys.readouterr().err
    assert err.startswith("dojo: error: ") and err.count("\n") == 1 and words in err, err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("sql", "cap", "value", "words"), [
    # 10,000 rows of 1 kB strings: about 10 MB held, past a 1 MiB cap within the first batch
    ("SELECT repeat('x', 1000) FROM range(1000000)", "MAX_RESULT_BYTES", 1 << 20,
     "pass 1 MiB in memory"),
    # one 2 GB value is built outside DuckDB's pool: the address-space cap stops it
    ("SELECT repeat('x', 2000000000)", "QUERY_MEMORY_BYTES", 256 << 20,
     "more than 256 MiB of memory"),
])
def test_query_memory_bounds(sql: str, cap: str, value: int, words: str, tiny_set: Path,
                             tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    monkeypatch.setattr(query, cap, value)
    monkeypatch.chdir(tmp_path)
    before = resource.getrlimit(resource.RLIMIT_AS)
    assert main(["data", "query", sql, "--catalog", str(tiny_set / "catalog")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dojo: error: ") and err.count("\n") == 1 and words in err, err
    assert os.listdir(tmp_path) == []
    assert resource.getrlimit(resource.RLIMIT_AS) == before  # the cap is lifted after the query


def test_capped_query_exits_cleanly(tiny_set: Path, tmp_path: Path) -> None:
    """A query stopped at the cap while DuckDB still streamed it aborted the interpreter's exit
    now and then (SIGABRT, 'terminate called ... exception not rethrown' after the line)."""
    import subprocess
    import sys

    import dojo

    src = str(Path(dojo.__file__).parents[1])  # this checkout's dojo in the child too
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    code = ("import sys, dojo.data.query as q; from dojo.cli.main import main; "
            "q.MAX_RESULT_BYTES = 1 << 20; sys.exit(main(sys.argv[1:]))")
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", code, "data", "query",
                               "SELECT repeat('x', 1000) || range FROM range(1000000)",
                               "--catalog", str(tiny_set / "catalog")], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
