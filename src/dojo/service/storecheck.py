"""Opening the store's data folder and database with one-line errors (the CLI's contract).

`opened(data, db)` wraps the folder's creation and the database's connection and migration:
an OS error on the folder, a URL SQLAlchemy cannot parse, a driver that is not installed or a
server that does not answer becomes a `ConfigError` naming `--data` or `--db`, with the URL's
password hidden (style rule 16), and a data folder that did not exist before is removed again.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dojo.errors import ConfigError

DB_EXPECTED = "a database URL like postgresql://host/db (default: SQLite in --data)"


def safe_url(url: str) -> str:
    """`url` with its password replaced by ***, or as given when it does not parse."""
    try:
        import sqlalchemy as sa

        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # a URL that does not parse: drop what may be user:password@
        return url.split("@")[-1] if "@" in url else url


def _reason(err: BaseException) -> str:
    text = " ".join(str(getattr(err, "orig", None) or err).split())
    return text.split(" (Background on this error")[0][:200]


@contextmanager
def opened(data: Path, db: str | None) -> Iterator[None]:
    """The block opens the store; its errors become ConfigErrors (module docstring)."""
    import sqlalchemy as sa

    if data.exists() and not data.is_dir():
        raise ConfigError("--data", "data", str(data), "a folder (this is a file)")
    made = _first_missing(data)
    try:
        yield
    except OSError as err:
        _undo(made)
        raise ConfigError("--data", "data", str(data), f"a folder that can be made and written "
                          f"({err.strerror or err})") from None
    except (sa.exc.SQLAlchemyError, ImportError, ValueError) as err:
        _undo(made)
        if db:
            raise ConfigError("--db", "db", safe_url(db), f"{DB_EXPECTED} ({_reason(err)})") \
                from None
        raise ConfigError("--data", "data", str(data), f"a folder whose dojo.db is a dojo store "
                          f"({_reason(err)})") from None
    except BaseException:
        _undo(made)
        raise


def _first_missing(data: Path) -> Path | None:
    """The outermost folder of `data`'s path that does not exist yet (None: all exist)."""
    missing = None
    for folder in (data, *data.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def _undo(made: Path | None) -> None:
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)


def check_listen(host: str, port: int) -> None:
    """ConfigError unless `host` resolves and `port` can be bound there now (checked by binding
    and closing at once, before anything is written; uvicorn binds again when it starts)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as err:
        raise ConfigError("--host", "host", host, f"an address of this machine ({err})") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as err:
            expected = f"an address and port free to listen on ({err.strerror or err})"
            if err.errno == errno.EADDRINUSE:
                raise ConfigError("--port", "port", port, expected) from None
            raise ConfigError("--host", "host", host, expected) from None
