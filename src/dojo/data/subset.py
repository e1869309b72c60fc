"""A clip set made of clips of other sets: a dataset version (or any list of clip hashes),
materialized as a manifest the loader reads like any other set.

`write_subset(catalog, hashes, out, repeats)` looks each clip up in the catalog (its set and
name), takes its entry from that set's manifest, and writes OUT/manifest.json whose video and
label paths are absolute (paths, or fsspec URLs for sets indexed by URL), so no file is
copied. A clip listed `repeats[hash]` times is drawn that many times as often by the
loader: that is how slice weights sample. All sets must share the cameras, frame size, grid
and frame rate; the first one's are used.
"""

from __future__ import annotations

import json
import os
import posixpath
from pathlib import Path
from typing import Any

from dojo.data import store
from dojo.data.catalog import read_set_manifest, read_tables
from dojo.data.layout import FORMAT, VERSION, Manifest
from dojo.errors import DojoError

_ALIKE = ("cameras", "width", "height", "grid", "fps")


def write_subset(catalog: str, hashes: list[str] | tuple[str, ...], out: Path,
                 repeats: dict[str, int] | None = None) -> Path:
    """Write OUT/manifest.json for the clips `hashes` (module docstring); returns its path."""
    rows = read_tables(catalog, ("clips",))["clips"].to_pylist()
    where = {r["clip_hash"]: (r["dataset"], r["name"]) for r in rows}
    missing = [h for h in hashes if h not in where]
    if missing:
        raise DojoError(f"{catalog}: {len(missing)} clips of the version are not in the catalog "
                        f"(first {missing[0][:16]})")
    manifests: dict[str, Manifest] = {}
    entries: list[dict[str, Any]] = []
    for h in sorted(set(hashes), key=lambda h: where[h]):
        dataset, name = where[h]
        if dataset not in manifests:
            manifests[dataset] = read_set_manifest(dataset)
            _check_alike(manifests[dataset], next(iter(manifests.values())), dataset)
        m = manifests[dataset]
        entry = next((e for e in m.clips if e.name == name), None)
        if entry is None:
            raise DojoError(f"{dataset}/manifest.json: has no clip {name} any more")
        label = posixpath.basename(dataset.rstrip("/")) if store.is_url(dataset) else \
            os.path.basename(dataset.rstrip("/"))
        for k in range(max(1, (repeats or {}).get(h, 1))):
            entries.append({"name": f"{label}-{name}" + (f"-{k}" if k else ""),
                            "frames": entry.frames,
                            "videos": {c: store.join(dataset, p)
                                       for c, p in entry.videos.items()},
                            "labels": store.join(dataset, entry.labels),
                            "tags": dict(entry.tags)})
    if not entries:
        raise DojoError(f"{out}: no clips to write")
    first = next(iter(manifests.values()))
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format": FORMAT, "version": VERSION, "fps": first.fps,
                       "width": first.width, "height": first.height, "gop": first.gop,
                       "cameras": list(first.cameras),
                       "grid": {"size": first.grid.size, "range_m": first.grid.range_m},
                       "classes": list(first.classes), "clips": entries}, indent=1) + "\n"
    store.write_bytes(str(out / "manifest.json"), text.encode())
    return out / "manifest.json"


def _check_alike(m: Manifest, first: Manifest, dataset: str) -> None:
    for key in _ALIKE:
        if getattr(m, key) != getattr(first, key):
            raise DojoError(f"{dataset}/manifest.json: {key} = {getattr(m, key)!r}, the other "
                            f"sets of the version have {getattr(first, key)!r}")
