"""Atomic file writes: a reader never sees a half-written trace or report.

The bytes go to a temporary file in the target's own folder (same file system, so the rename
is atomic), are flushed to disk, and then replace the target in one `os.replace`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from dojo.errors import DojoError


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns the path. Unwritable folders are a
    `DojoError` naming the path."""
    # Through a symlink to its target: replacing the link itself would swap, say, /dev/stdout
    # (-> /proc/self/fd/1) for a regular file, for every process on the machine.
    shown = Path(path)
    target = Path(os.path.realpath(path)) if shown.is_symlink() else shown
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise DojoError(f"{shown}: folder '{folder}' does not exist: expected an existing "
                        "folder for the output file")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as err:
        raise DojoError(f"{shown}: cannot write there ({err.strerror})") from None
    try:
        # mkstemp makes the file private (0600); a report is an ordinary file.
        mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        # Leave no temporary file behind, whatever went wrong (full disk, Ctrl-C).
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise DojoError(f"{shown}: cannot write there ({err.strerror or err})") from None
        raise
    return shown


def write_text_atomic(path: str | Path, text: str) -> Path:
    """`write_bytes_atomic` of UTF-8 text."""
    return write_bytes_atomic(path, text.encode("utf-8"))
