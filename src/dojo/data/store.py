"""Where clips and catalogs live: local folders by default, any fsspec URL otherwise.

A location is a plain path (`runs/data/train`) or a URL (`file:///data/clips`, `memory://set`,
`s3://bucket/clips` where the fsspec backend for it is installed). Everything the catalog
reads and writes goes through these few functions, so object storage needs no other code.
Writes are atomic per file: the bytes go to a temporary name beside the target, then a rename.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

from dojo.errors import DojoError


def resolve(url: str) -> tuple[Any, str]:
    """(fsspec file system, path within it) of a path or URL; bad protocols are a DojoError."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(str(url))
    except (ValueError, ImportError) as err:
        raise DojoError(f"{url}: cannot open this location ({err})") from None
    return fs, path.rstrip("/") or path


def join(url: str, *parts: str) -> str:
    """`url`/`parts` (URLs keep their protocol)."""
    return posixpath.join(str(url).rstrip("/"), *parts) if "://" in str(url) else \
        os.path.join(str(url), *parts)


def is_url(url: str) -> bool:
    """True for a URL with a protocol other than a plain local path."""
    return "://" in str(url)


def read_bytes(url: str, limit: int | None = None) -> bytes:
    """The whole file; a missing or unreadable file, a local FIFO or device (whose read may
    never end), or with `limit` a file over `limit` bytes (read no further) is a DojoError
    naming it."""
    import stat

    fs, path = resolve(url)
    try:
        if not is_url(url) and os.path.exists(path) and \
                not stat.S_ISREG(os.stat(path).st_mode) and not os.path.isdir(path):
            raise DojoError(f"{url}: is a device or special file: expected a regular file")
        if limit is None:
            data: bytes = fs.cat_file(path)
        else:
            with fs.open(path, "rb") as f:
                data = f.read(limit + 1)
            if len(data) > limit:
                raise DojoError(f"{url}: over {limit:,} bytes: expected a smaller file")
    except FileNotFoundError:
        raise DojoError(f"{url}: does not exist") from None
    except (OSError, ValueError) as err:
        raise DojoError(f"{url}: cannot read ({err})") from None
    return data


def exists(url: str) -> bool:
    fs, path = resolve(url)
    return bool(fs.exists(path))


def isdir(url: str) -> bool:
    fs, path = resolve(url)
    return bool(fs.isdir(path))


def write_bytes(url: str, data: bytes) -> None:
    """Write `data` to `url` atomically (temporary sibling, then rename); makes the folder."""
    fs, path = resolve(url)
    folder = posixpath.dirname(path) if is_url(url) else os.path.dirname(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        if folder:
            fs.makedirs(folder, exist_ok=True)
        with fs.open(tmp, "wb") as out:
            out.write(data)
        fs.mv(tmp, path)
    except OSError as err:
        _remove(fs, tmp)
        raise DojoError(f"{url}: cannot write ({err.strerror or err})") from None
    except BaseException:
        _remove(fs, tmp)
        raise


def _remove(fs: Any, path: str) -> None:
    try:
        if fs.exists(path):
            fs.rm(path)
    except OSError:
        pass
