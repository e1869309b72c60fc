"""Fixtures of the service tests: the same store suite on SQLite and on a real PostgreSQL.

PostgreSQL comes from DOJO_TEST_PG (default postgresql://127.0.0.1:5432/test, trust auth); each
test gets its own schema, dropped afterwards, so parallel workers never collide. Where no server
answers, the PostgreSQL half is skipped with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="no service extra: pip install -e '.[service]'")

PG_URL = os.environ.get("DOJO_TEST_PG", "postgresql://127.0.0.1:5432/test")
_pg_error: list[str] = []


def pg_reason() -> str | None:
    """None when PostgreSQL answers at PG_URL, else why not (checked once)."""
    if not _pg_error:
        import sqlalchemy as sa

        try:
            engine = sa.create_engine("postgresql+psycopg://" + PG_URL.split("://", 1)[1],
                                      connect_args={"connect_timeout": 3})
            with engine.connect() as c:
                c.execute(sa.text("select 1"))
            engine.dispose()
            _pg_error.append("")
        except Exception as err:  # any failure to reach the server means: skip, saying why
            _pg_error.append(f"no PostgreSQL at {PG_URL} ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:120]}); set DOJO_TEST_PG")
    return _pg_error[0] or None


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    """(url, schema) of an empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'dojo.db'}", None
        return
    reason = pg_reason()
    if reason:
        print(f"\nskipped: {reason}")
        pytest.skip(reason)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield PG_URL, schema
    import sqlalchemy as sa

    engine = sa.create_engine("postgresql+psycopg://" + PG_URL.split("://", 1)[1])
    with engine.begin() as c:
        c.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()
