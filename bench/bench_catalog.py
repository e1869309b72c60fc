"""Catalog scale: DuckDB queries over 100,000 clips of synthetic metadata, and indexing speed.

    .venv/bin/python bench/bench_catalog.py [--clips 100000] [--index-clips 16] [--rounds 3]

1. Writes a catalog of N clips straight as Parquet (the schemas of `dojo.data.catalog`; 6
   cameras, 8 frames and 20 objects per clip, tags drawn from the scenario mix), then times
   each query in a fresh connection, as `dojo data query` runs it (views opened, query run,
   rows fetched), best of `--rounds`. The goal: each under 1 s at 100,000 clips.
2. Synthesizes a small real set (96 x 64, 6 cameras, 8 frames) and times `index_set` on it:
   clips per second (hashing, PyAV demux and one decoded frame per camera, labels, occlusion).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np

QUERIES = {
    "count by scenario": "SELECT scenario, count(*) FROM clips GROUP BY 1 ORDER BY 2 DESC",
    "rain at night with a pedestrian crossing": (
        "SELECT name, pedestrians FROM clips WHERE weather = 'rain' AND time_of_day = 'night' "
        "AND scenario = 'pedestrian_crossing' AND pedestrians >= 3"),
    "10 most occluded clips": "SELECT name, occlusion FROM clips ORDER BY occlusion DESC LIMIT 10",
    "fast clips, mean bits per pixel": (
        "SELECT avg(bits_per_pixel), count(*) FROM clips WHERE ego_speed_mps > 20"),
    "a slice view": "SELECT count(*) FROM slice_night",
}


def write_catalog(folder: Path, n: int, seed: int = 0) -> float:
    """N clips of synthetic metadata as the catalog's Parquet files; returns seconds."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dojo.data.catalog import _schemas
    from dojo.data.scenario import TAGS

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    hashes = np.array([f"{i:064x}" for i in range(n)])
    tags = {k: rng.choice(list(mix), n, p=np.array(list(mix.values())) / sum(mix.values()))
            for k, mix in TAGS.items()}
    cams, frames, objs = 6, 8, 20
    tables = {
        "clips": {"clip_hash": hashes, "name": [f"clip_{i:06d}" for i in range(n)],
                  "dataset": ["/fleet/set"] * n, **tags, "frames": np.full(n, frames),
                  "fps": np.full(n, 10.0), "width": np.full(n, 1280), "height": np.full(n, 960),
                  "cameras": np.full(n, cams), "grid": np.full(n, 200),
                  "range_m": np.full(n, 50.0)},
        "cameras": {"clip_hash": np.repeat(hashes, cams),
                    "camera": np.tile([f"cam{c}" for c in range(cams)], n),
                    "path": ["/fleet/x.mp4"] * (n * cams), "codec": ["h264"] * (n * cams),
                    "pix_fmt": ["yuv420p"] * (n * cams), "width": np.full(n * cams, 1280),
                    "height": np.full(n * cams, 960), "frames": np.full(n * cams, frames),
                    "keyframes": np.full(n * cams, 1), "bytes": rng.integers(1e5, 1e6, n * cams),
                    "bitrate_bps": rng.uniform(1e6, 1e7, n * cams),
                    "bits_per_pixel": rng.uniform(0.03, 0.3, n * cams),
                    "mean_luma": rng.uniform(10, 200, n * cams)},
        "frames": {"clip_hash": np.repeat(hashes, frames), "frame": np.tile(np.arange(frames), n),
                   "timestamp_s": np.tile(np.arange(frames) / 10.0, n),
                   "ego_speed_mps": rng.uniform(0, 30, n * frames),
                   "occupied_cells": rng.integers(0, 4000, n * frames),
                   "objects_in_range": rng.integers(0, objs, n * frames)},
        "objects": {"clip_hash": np.repeat(hashes, objs), "object": np.tile(np.arange(objs), n),
                    "class": rng.choice(["car", "truck", "pedestrian", "cone"], n * objs),
                    "length_m": rng.uniform(0.4, 9, n * objs),
                    "width_m": rng.uniform(0.4, 2.5, n * objs),
                    "height_m": rng.uniform(0.6, 3.4, n * objs),
                    "min_distance_m": rng.uniform(0, 60, n * objs),
                    "frames_in_range": rng.integers(0, frames + 1, n * objs),
                    "occlusion": rng.uniform(0, 1, n * objs)},
        "splits": {"clip_hash": hashes, "split": rng.choice(["train", "val", "pool"], n)},
    }
    schemas = _schemas()
    for name, cols in tables.items():
        table = pa.table({f.name: cols[f.name] for f in schemas[name]}, schema=schemas[name])
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        (folder / f"{name}.parquet").write_bytes(buf.getvalue())
    return time.perf_counter() - start


def time_queries(folder: Path, rounds: int) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds of each query's fastest round in a fresh connection, views
    included; CPU is this process's, DuckDB's threads included (steadier on a busy machine)."""
    from dojo.data.query import Slice, connect, run_sql

    out = {}
    for label, sql in QUERIES.items():
        best = (float("inf"), 0.0)
        for _ in range(rounds):
            start, cpu = time.perf_counter(), time.process_time()
            con = connect(str(folder), {"night": Slice(where="time_of_day = 'night'")})
            run_sql(con, sql)
            took = (time.perf_counter() - start, time.process_time() - cpu)
            best = min(best, took)
            con.close()
        out[label] = best
    return out


def time_indexing(folder: Path, clips: int) -> tuple[float, float]:
    """Clips per wall second and per CPU second that `index_set` catalogues from a freshly
    synthesized set (the second run: imports and first-use costs excluded)."""
    from dojo.data.catalog import index_set
    from dojo.data.synth import SynthConfig, synthesize

    synthesize(folder / "set", SynthConfig(clips=clips, seed=1), catalog="")
    index_set(str(folder / "set"), str(folder / "warm"))
    start, cpu = time.perf_counter(), time.process_time()
    index_set(str(folder / "set"), str(folder / "cat"))
    return clips / (time.perf_counter() - start), clips / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=100_000)
    parser.add_argument("--index-clips", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        seconds = write_catalog(folder, args.clips)
        size = sum(p.stat().st_size for p in folder.glob("*.parquet"))
        print(f"catalog of {args.clips:,} clips written in {seconds:.2f} s, "
              f"{size / 2**20:.1f} MiB of Parquet")
        for label, (wall, cpu) in time_queries(folder, args.rounds).items():
            print(f"  {wall * 1e3:7.1f} ms wall, {cpu * 1e3:6.1f} ms CPU  {label}")
        wall, cpu = time_indexing(folder, args.index_clips)
        print(f"indexing real clips (96 x 64, 6 cameras, 8 frames): {wall:.1f} clips/s wall, "
              f"{cpu:.1f} clips per CPU second")


if __name__ == "__main__":
    main()
