"""The clip catalog: Parquet tables about every clip, written by `dojo data synth` and `index`.

A catalog is a folder (local path or fsspec URL) of five Parquet files and a `versions/` folder:

    clips.parquet    clip_hash, name, dataset (the set's location), scenario, weather,
                     time_of_day (the generator's tags or the manifest's; null when unknown),
                     frames, fps, width, height, cameras, grid, range_m
    cameras.parquet  clip_hash, camera, path, codec, pix_fmt, width, height, frames, keyframes,
                     bytes, bitrate_bps, bits_per_pixel, mean_luma (first frame, 0..255)
    frames.parquet   clip_hash, frame, timestamp_s, ego_speed_mps, occupied_cells,
                     objects_in_range
    objects.parquet  clip_hash, object, class, length_m, width_m, height_m, min_distance_m,
                     frames_in_range, occlusion (0..1, `clipstats`)
    splits.parquet   clip_hash, split
    versions/ID.json an immutable dataset version: the sorted clip hashes; ID is the first 16
                     hex digits of the SHA-256 of them, so the same clips give the same ID

`clip_hash` is the SHA-256 of the clip's files (each camera's MP4 and labels.npz, in the
manifest's camera order, each prefixed by its camera name), so it names the content, not the
place. Nothing a query can compute is stored twice: object counts, mean speeds and the like are
views (`dojo.data.query`). Indexing a set replaces the rows of the clips it held before;
every file is written under a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dojo.config import load_json, parse
from dojo.data import store
from dojo.data.clipstats import codec_facts, frame_rows, label_problem, object_rows
from dojo.data.layout import ClipEntry, Manifest, SkippedClip
from dojo.errors import ConfigError, DojoError

TABLES = ("clips", "cameras", "frames", "objects", "splits")
TAG_KEYS = ("scenario", "weather", "time_of_day")
Progress = Callable[[int, int], None]


def _schemas() -> dict[str, Any]:
    import pyarrow as pa

    s, f, i = pa.string(), pa.float64(), pa.int64()
    cols = {
        "clips": [("clip_hash", s), ("name", s), ("dataset", s), ("scenario", s),
                  ("weather", s), ("time_of_day", s), ("frames", i), ("fps", f), ("width", i),
                  ("height", i), ("cameras", i), ("grid", i), ("range_m", f)],
        "cameras": [("clip_hash", s), ("camera", s), ("path", s), ("codec", s), ("pix_fmt", s),
                    ("width", i), ("height", i), ("frames", i), ("keyframes", i), ("bytes", i),
                    ("bitrate_bps", f), ("bits_per_pixel", f), ("mean_luma", f)],
        "frames": [("clip_hash", s), ("frame", i), ("timestamp_s", f), ("ego_speed_mps", f),
                   ("occupied_cells", i), ("objects_in_range", i)],
        "objects": [("clip_hash", s), ("object", i), ("class", s), ("length_m", f),
                    ("width_m", f), ("height_m", f), ("min_distance_m", f),
                    ("frames_in_range", i), ("occlusion", f)],
        "splits": [("clip_hash", s), ("split", s)],
    }
    return {name: pa.schema(c) for name, c in cols.items()}


def table_schemas() -> dict[str, Any]:
    """The Arrow schema of each catalog table, by name (`TABLES`)."""
    return _schemas()


SORT = {"clips": [("dataset", "ascending"), ("name", "ascending")],
        "cameras": [("clip_hash", "ascending"), ("camera", "ascending")],
        "frames": [("clip_hash", "ascending"), ("frame", "ascending")],
        "objects": [("clip_hash", "ascending"), ("object", "ascending")],
        "splits": [("clip_hash", "ascending")]}


@dataclass(frozen=True)
class IndexResult:
    """What `index_set` did: the catalog, the clips indexed, and the clips skipped (one line
    each: clip, file, reason)."""

    catalog: str
    dataset: str
    split: str
    clips: tuple[str, ...]  # clip hashes, manifest order
    skipped: tuple[SkippedClip, ...]


class _Bad(Exception):
    def __init__(self, file: str, reason: str) -> None:
        super().__init__(reason)
        self.file, self.reason = file, reason


def default_catalog(root: str) -> str:
    """Where a set's catalog goes unless told: ROOT/catalog."""
    return store.join(root, "catalog")


def read_set_manifest(root: str) -> Manifest:
    """The manifest of the clip set at `root` (path or URL); problems are one DojoError."""
    url = store.join(root, "manifest.json")
    if not store.exists(url):
        raise DojoError(f"{url}: no manifest (expected a clip set made by `dojo data synth` or "
                        "a manifest.json in its layout, docs/data.md)")
    return parse(Manifest, load_json(store.read_bytes(url), url), url)


def dataset_name(root: str) -> str:
    """The set's location as stored in the catalog: an absolute path, or the URL as given."""
    import os

    return str(root).rstrip("/") if store.is_url(root) else os.path.abspath(root)


def index_set(root: str, catalog: str = "", split: str = "", progress: Progress | None = None
              ) -> IndexResult:
    """Index the clip set at `root` into `catalog` (default ROOT/catalog) under `split`
    (default: the set folder's name). Bad clips are skipped and returned, never indexed."""
    manifest = read_set_manifest(root)
    catalog = catalog or default_catalog(root)
    check_catalog_apart(root, manifest, catalog)
    split = split or dataset_name(root).rstrip("/").rsplit("/", 1)[-1]
    if store.exists(store.join(catalog, "clips.parquet")):  # refused before any clip is read
        for name in TABLES:
            table_schema(catalog, name)
    rows: dict[str, dict[str, list[Any]]] = {t: {} for t in TABLES}
    hashes, skipped = [], []
    for n, entry in enumerate(manifest.clips):
        try:
            clip, tables = clip_tables(root, manifest, entry)
        except _Bad as bad:
            skipped.append(SkippedClip(entry.name, bad.file, bad.reason))
        else:
            if clip not in hashes:  # the same content twice is one clip
                hashes.append(clip)
                for name, cols in tables.items():
                    for key, values in cols.items():
                        rows[name].setdefault(key, []).extend(values)
                rows["splits"].setdefault("clip_hash", []).append(clip)
                rows["splits"].setdefault("split", []).append(split)
        if progress is not None:
            progress(n + 1, len(manifest.clips))
    merge(catalog, rows, dataset_name(root))
    return IndexResult(catalog, dataset_name(root), split, tuple(hashes), tuple(skipped))


def check_catalog_apart(root: str, m: Manifest, catalog: str) -> None:
    """ConfigError when a local catalog folder is a folder of the set's own files: the set
    folder (its tables would sit beside manifest.json, and a set indexed into another set's
    folder mixes the two), a folder holding a clip's video or labels, or any folder with a
    manifest.json. A folder of its own inside the set (the default, ROOT/catalog) is fine."""
    import os

    if store.is_url(catalog) or store.is_url(root):
        return
    where = os.path.realpath(catalog)
    folders = {os.path.realpath(root)}
    for entry in m.clips:
        for rel in (*entry.videos.values(), entry.labels):
            folders.add(os.path.dirname(os.path.realpath(store.join(root, rel))))
    if where in folders or os.path.isfile(os.path.join(where, "manifest.json")):
        raise ConfigError("--catalog", "catalog", catalog,
                          f"a folder apart from the clip files of {root} (it holds them or a "
                          f"manifest.json; the default is {default_catalog(root)})")


def clip_tables(root: str, m: Manifest, entry: ClipEntry) -> tuple[str, dict[str, Any]]:
    """(clip_hash, rows of clips/cameras/frames/objects) of one clip; `_Bad` when it is
    missing, corrupt or mislabelled."""
    if set(entry.videos) != set(m.cameras):
        raise _Bad(store.join(root, "manifest.json"), f"clip {entry.name} lists cameras "
                   f"{sorted(entry.videos)}, the manifest has {sorted(m.cameras)}")
    digest = hashlib.sha256()
    videos = []
    for cam in m.cameras:
        url = store.join(root, entry.videos[cam])
        data = _read(url)
        digest.update(cam.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
        videos.append((cam, url, data))
    labels_url = store.join(root, entry.labels)
    raw = _read(labels_url)
    digest.update(b"labels\0" + len(raw).to_bytes(8, "little") + raw)
    clip = digest.hexdigest()
    labels = _labels(labels_url, raw, m, entry.frames)
    cams: dict[str, list[Any]] = {}
    for cam, url, data in videos:
        facts = _video(url, data, m, entry.frames)
        for key, value in {"clip_hash": clip, "camera": cam, "path": url, **facts}.items():
            cams.setdefault(key, []).append(value)
    tags = {k: entry.tags.get(k) for k in TAG_KEYS}
    clips = {"clip_hash": [clip], "name": [entry.name], "dataset": [dataset_name(root)],
             **{k: [v] for k, v in tags.items()}, "frames": [entry.frames], "fps": [m.fps],
             "width": [m.width], "height": [m.height], "cameras": [len(m.cameras)],
             "grid": [m.grid.size], "range_m": [float(m.grid.range_m)]}
    return clip, {"clips": clips, "cameras": cams,
                  "frames": frame_rows(clip, labels, m.fps, m.grid.range_m),
                  "objects": object_rows(clip, labels, m.classes, m.grid.range_m, m.width,
                                         m.height)}


def _read(url: str) -> bytes:
    try:
        return store.read_bytes(url)
    except DojoError as err:
        raise _Bad(url, str(err).removeprefix(f"{url}: ")) from None


def _labels(url: str, raw: bytes, m: Manifest, frames: int) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            labels = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise _Bad(url, f"corrupt labels ({err})") from None
    g, n = m.grid.size, len(m.cameras)
    want = {"occupancy": (frames, g, g), "intrinsics": (n, 3, 3), "extrinsics": (n, 4, 4)}
    for key, shape in want.items():
        if key not in labels:
            raise _Bad(url, f"labels lack '{key}'")
        if labels[key].shape != shape:
            raise _Bad(url, f"labels '{key}' have shape {labels[key].shape}, expected {shape}")
    if labels["occupancy"].dtype != np.uint8 or labels["occupancy"].max(initial=0) > 1:
        raise _Bad(url, "labels 'occupancy' must be uint8 0/1")
    problem = label_problem(labels, frames, g, m.grid.range_m, len(m.classes))
    if problem:
        raise _Bad(url, f"mislabelled: {problem}")
    return labels


def _video(url: str, data: bytes, m: Manifest, frames: int) -> dict[str, Any]:
    import av

    try:
        facts = codec_facts(data)
    except (av.FFmpegError, OSError, IndexError, StopIteration, ValueError) as err:
        raise _Bad(url, f"corrupt video ({str(err).splitlines()[0] if str(err) else err!r})") \
            from None
    if (facts["width"], facts["height"]) != (m.width, m.height):
        raise _Bad(url, f"video is {facts['width']}x{facts['height']}, manifest says "
                   f"{m.width}x{m.height}")
    if facts["frames"] < frames:
        raise _Bad(url, f"video has {facts['frames']} frames, manifest says {frames} "
                   "(truncated?)")
    return facts


def read_tables(catalog: str, names: tuple[str, ...] = TABLES) -> dict[str, Any]:
    """The catalog's tables as pyarrow Tables; a missing catalog is a DojoError."""
    import pyarrow.parquet as pq

    out = {}
    for name in names:
        url = store.join(catalog, f"{name}.parquet")
        if not store.exists(url):
            raise DojoError(f"{catalog}: no catalog there ({name}.parquet missing; make one with "
                            "`dojo data synth` or `dojo data index DIR`)")
        try:
            out[name] = pq.read_table(io.BytesIO(store.read_bytes(url)))
        except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError
            raise DojoError(f"{url}: not a readable Parquet file ({err})") from None
        check_schema(url, name, out[name].schema)
    return out


def table_schema(catalog: str, name: str) -> Any:
    """The schema of the catalog's table `name`, read from its Parquet footer alone, checked
    by `check_schema`; a missing or unreadable file is a DojoError naming it."""
    import pyarrow.parquet as pq

    url = store.join(catalog, f"{name}.parquet")
    if not store.exists(url):
        raise DojoError(f"{catalog}: no catalog there ({name}.parquet missing; make one with "
                        "`dojo data synth` or `dojo data index DIR`)")
    fs, path = store.resolve(url)
    try:
        with fs.open(path, "rb") as f:
            schema = pq.read_schema(f)
    except (OSError, ValueError) as err:
        raise DojoError(f"{url}: not a readable Parquet file ({err})") from None
    check_schema(url, name, schema)
    return schema


def check_schema(url: str, name: str, schema: Any) -> None:
    """A table of another layout (another tool's Parquet, an older catalog) is a DojoError
    naming its first differing column, before any view or merge trips over it."""
    expected = _schemas()[name]
    for want in expected:
        i = schema.get_field_index(want.name)
        if i < 0:
            raise DojoError(f"{url}: column '{want.name}' is missing: expected a dojo catalog "
                            f"table with the columns {', '.join(expected.names)}")
        if not schema.field(i).type.equals(want.type):
            raise DojoError(f"{url}: column '{want.name}' has type {schema.field(i).type}: "
                            f"expected {want.type}")
    extra = [n for n in schema.names if n not in expected.names]
    if extra:
        raise DojoError(f"{url}: column '{extra[0]}' is not one of the catalog's: expected "
                        f"the columns {', '.join(expected.names)}")


def merge(catalog: str, rows: dict[str, dict[str, list[Any]]], dataset: str) -> None:
    """Replace the rows of `dataset` (and of the clips in `rows`) in the catalog's tables."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schemas = _schemas()
    new = {name: pa.table({f.name: rows[name].get(f.name, []) for f in schemas[name]},
                          schema=schemas[name]) for name in TABLES}
    if store.exists(store.join(catalog, "clips.parquet")):
        old = read_tables(catalog)
        gone = pc.filter(old["clips"]["clip_hash"], pc.equal(old["clips"]["dataset"], dataset))
        drop = pa.concat_arrays([gone.combine_chunks(), new["clips"]["clip_hash"].combine_chunks()])
        for name in TABLES:
            kept = old[name].filter(pc.invert(pc.is_in(old[name]["clip_hash"], drop)))
            new[name] = pa.concat_tables([kept.cast(schemas[name]), new[name]])
    for name in TABLES:
        buf = io.BytesIO()
        pq.write_table(new[name].sort_by(SORT[name]), buf, compression="zstd")
        store.write_bytes(store.join(catalog, f"{name}.parquet"), buf.getvalue())


@dataclass(frozen=True)
class Version:
    """An immutable dataset version: its ID, clip hashes (sorted), and where it came from."""

    id: str
    clips: tuple[str, ...]
    parent: str = ""
    note: str = ""


def version_id(hashes: list[str] | tuple[str, ...]) -> str:
    """First 16 hex digits of the SHA-256 of the sorted, distinct clip hashes."""
    return hashlib.sha256("\n".join(sorted(set(hashes))).encode()).hexdigest()[:16]


def write_version(catalog: str, hashes: list[str] | tuple[str, ...], parent: str = "",
                  note: str = "") -> Version:
    """Record a dataset version (never overwritten: the same clips give the same ID)."""
    clips = tuple(sorted(set(hashes)))
    version = Version(version_id(clips), clips, parent, note)
    url = store.join(catalog, "versions", f"{version.id}.json")
    if not store.exists(url):
        text = json.dumps({"id": version.id, "clips": list(clips), "parent": parent,
                           "note": note}, indent=1) + "\n"
        store.write_bytes(url, text.encode())
    return version


def read_version(catalog: str, vid: str) -> Version:
    """A recorded version; a missing or altered one is a DojoError."""
    url = store.join(catalog, "versions", f"{vid}.json")
    if not store.exists(url):
        raise ConfigError("--version", "version", vid, f"a version recorded in {catalog}/versions")
    data = load_json(store.read_bytes(url), url)
    if not isinstance(data, dict) or not isinstance(data.get("clips"), list):
        raise DojoError(f"{url}: not a dataset version (expected an object with a 'clips' list)")
    clips = tuple(data["clips"])
    if version_id(clips) != vid:
        raise DojoError(f"{url}: its clips hash to {version_id(clips)}, not {vid} (altered?)")
    return Version(vid, clips, data.get("parent", ""), data.get("note", ""))
