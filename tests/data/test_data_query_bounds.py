"""`dojo data query` is bounded by the catalog's structure, not by the numbers in a query: more
rows than `MAX_ROWS` or a run past `QUERY_LIMIT_S` is one line, exit 2, nothing written."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import dojo.data.query as query
from dojo.cli.main import main


@pytest.mark.parametrize(("sql", "words"), [
    ("SELECT * FROM range(10000000000)", "more than 1,000,000 rows"),
    ("SELECT count(*) FROM range(10000000000000)", "ran past 1 s"),  # hours without the bound
])
def test_query_bounds(sql: str, words: str, tiny_set: Path, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(query, "QUERY_LIMIT_S", 1.0)
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    assert main(["data", "query", sql, "--catalog", str(tiny_set / "catalog")]) == 2
    assert time.monotonic() - start < 20
    err = capsys.readouterr().err
    assert err.startswith("dojo: error: ") and err.count("\n") == 1 and words in err, err
    assert os.listdir(tmp_path) == []
