"""`dojo train occupancy --train-set VERSION_OR_DIR`: train on a dataset version or a set folder.

The training set is then not DATA/train but:
- a clip set folder (path or fsspec URL) with a manifest.json, read as it is (a mined set,
  RUN/mined/ID, is one);
- a dataset version ID (16 hex digits) recorded in `--catalog` (default OUT/catalog; for a
  version mined by `dojo data mine RUN`, RUN/catalog): its clips are looked up in that catalog
  and written as OUT/train-set/manifest.json pointing at the clips where they lie (no copy).
The held-out set stays DATA/val. Either way the run indexes the set into OUT/catalog, and the
version it records in metrics.json (`dataset.train`) is the set's clip hashes: for a version
given by ID, that ID (the same clips give the same ID).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dojo.data import store
from dojo.data.catalog import Version, read_set_manifest, read_tables, read_version
from dojo.data.layout import Manifest
from dojo.errors import ConfigError, DojoError

_VERSION_ID = re.compile(r"^[0-9a-f]{16}$")
FOLDER = "train-set"  # OUT/train-set: the version's manifest


@dataclass(frozen=True)
class TrainSet:
    """A resolved `--train-set`: the folder to read, or the version to materialize first."""

    text: str
    folder: str  # a set folder (path or URL); "" for a version
    version: Version | None
    catalog: str
    manifest: Manifest  # the set's (for a version: its first set's) cameras, size and grid
    windows: int  # training windows of `window` frames, stride 1, before bad clips


def resolve(text: str, catalog: str, out: Path, window: int) -> TrainSet:
    """Check `--train-set` and count its windows; reads, never writes."""
    manifest_url = store.join(text, "manifest.json")
    if store.exists(manifest_url):
        m = read_set_manifest(text)
        windows = sum(max(0, c.frames - window + 1) for c in m.clips)
        return TrainSet(text, text, None, "", m, windows)
    if not _VERSION_ID.match(text):
        raise ConfigError("--train-set", "train_set", text, "a clip set folder with a "
                          "manifest.json, or a dataset version ID (16 hex digits)")
    catalog = catalog or str(out / "catalog")
    if not store.exists(store.join(catalog, "versions", f"{text}.json")):
        raise ConfigError("--train-set", "train_set", text, f"a version recorded in {catalog}/"
                          "versions (give --catalog RUN/catalog, the catalog that recorded it)")
    version = read_version(catalog, text)
    rows = read_tables(catalog, ("clips",))["clips"].to_pylist()
    where = {r["clip_hash"]: r for r in rows}
    missing = [h for h in version.clips if h not in where]
    if missing or not version.clips:
        raise DojoError(f"{catalog}: version {text} lists {len(missing)} clips the catalog does "
                        f"not hold of {len(version.clips)} (first {(missing or [''])[0][:16]})")
    m = read_set_manifest(where[version.clips[0]]["dataset"])
    windows = sum(max(0, int(where[h]["frames"]) - window + 1) for h in version.clips)
    return TrainSet(text, "", version, catalog, m, windows)


def materialize(ts: TrainSet, out: Path) -> str:
    """The folder to train on: the given one, or OUT/train-set written for the version."""
    if ts.version is None:
        return ts.folder
    from dojo.data.subset import write_subset

    write_subset(ts.catalog, ts.version.clips, out / FOLDER)
    return str(out / FOLDER)
