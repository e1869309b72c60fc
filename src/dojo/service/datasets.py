"""Tenants' uploaded clip sets: a zip of `train/` and `val/` clip folders (docs/data.md's
layout), unpacked into DATA/datasets/TENANT/NAME for `occupancy` jobs.

The server only unpacks bytes, never runs or decodes them: entry names must be relative paths
of plain names (no `..`, no absolute paths, no links), below `train/` or `val/`, within the
count and size caps, or the whole upload is refused. The clips are validated by the worker that
trains on them (`dojo.data` opens every MP4 and label file there).
"""

from __future__ import annotations

import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

MAX_UPLOAD = 256 * 2**20      # bytes of zip
MAX_UNPACKED = 1024 * 2**20   # bytes once unpacked
MAX_ENTRIES = 20_000
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class BadUpload(Exception):
    """One line saying what is wrong with the upload."""


def folder(data: Path, tenant: str, name: str) -> Path:
    return data / "datasets" / tenant / name


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise BadUpload(f"dataset name = {name[:64]!r}: expected lower-case letters, digits, "
                        "- and _ (at most 64)")


def unpack(zip_path: Path, target: Path) -> dict[str, int]:
    """Check every entry, then unpack into `target` (replaced atomically); returns counts."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise BadUpload("body: expected a zip file") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES:
            raise BadUpload(f"zip: {len(infos)} entries: expected at most {MAX_ENTRIES}")
        total = 0
        for info in infos:
            _check_entry(info)
            total += info.file_size
        if total > MAX_UNPACKED:
            raise BadUpload(f"zip: {total} bytes unpacked: expected at most {MAX_UNPACKED}")
        roots = {PurePosixPath(i.filename).parts[0] for i in infos}
        if not {"train", "val"} <= roots:
            raise BadUpload("zip: expected train/ and val/ clip sets (each with manifest.json)")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".upload-"))
        try:
            for info in infos:
                if info.is_dir():
                    continue
                out = staging.joinpath(*PurePosixPath(info.filename).parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    files = sum(1 for i in infos if not i.is_dir())
    return {"files": files, "bytes": total}


def _check_entry(info: zipfile.ZipInfo) -> None:
    name = info.filename
    path = PurePosixPath(name)
    mode = info.external_attr >> 16
    if (name.startswith("/") or "\\" in name or not path.parts
            or any(not _PART.match(p) for p in path.parts)):
        raise BadUpload(f"zip entry {name[:100]!r}: expected a relative path of plain names "
                        "(letters, digits, . _ -), no '..'")
    if path.parts[0] not in ("train", "val"):
        raise BadUpload(f"zip entry {name[:100]!r}: expected it under train/ or val/")
    if stat.S_ISLNK(mode):
        raise BadUpload(f"zip entry {name[:100]!r}: links are refused")
