"""Where output may go: one check of "can a new file be made in this folder" for every writer.

`os.access` alone is not enough: it answers yes to root on a read-only mount and on virtual file
systems such as /proc, where creating a file still fails.
"""

from __future__ import annotations

import os
from pathlib import Path


def nearest_existing(path: Path) -> Path:
    """`path` itself if it exists, else its closest existing ancestor (the folder a new
    `path` would be created in, directly or through new sub-folders). A symbolic link to
    nothing counts as existing: nothing can be created where it lies (`dangling_link`)."""
    probe = path
    while not (probe.exists() or probe.is_symlink()) and probe.parent != probe:
        probe = probe.parent
    return probe


def not_a_folder(path: Path) -> str:
    """What `path`, which is no folder, is, for an error line: a file, or a link to nothing."""
    target = dangling_link(path)
    return "a file" if target is None else f"a symbolic link to {target!r}, which does not exist"


def can_create_in(folder: Path) -> bool:
    """True when `folder` is a folder in which this process can create files."""
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return not (st.f_flag & os.ST_RDONLY) and st.f_blocks != 0


def dangling_link(path: Path) -> str | None:
    """The target of `path` when it is a symbolic link to nothing, else None. Such a path does
    not exist, but nothing can be made there either: a folder renamed or made onto it fails
    (with ENOTDIR or EEXIST) only once the work to fill it is done."""
    if path.is_symlink() and not path.exists():
        return os.readlink(path)
    return None
