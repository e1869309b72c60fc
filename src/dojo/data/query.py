"""SQL over the clip catalog with DuckDB, embedded; named slices from `slices.toml`.

`connect(catalog)` opens an in-memory DuckDB whose views read the catalog's Parquet files where
they lie (a local folder, or any fsspec URL registered with DuckDB): `cameras`, `frames`,
`objects`, `splits` as stored, and `clips`, the stored clip rows joined with what the other
tables say about each clip (so nothing is stored twice):

    split                  from splits
    ego_speed_mps          mean over frames (m/s);  max_objects_in_range: max over frames
    occupied_fraction      mean fraction of occupied grid cells
    objects, cars, trucks, pedestrians, cones   objects that come inside the grid's range
    occlusion              mean occlusion (0..1) of those objects
    mean_luma              mean over cameras of the first frame's luma (0..255)
    bits_per_pixel, video_bytes   mean and sum over cameras

Only one SELECT (or WITH ... SELECT) statement runs: nothing a query does can change the
catalog. Each slice of a slices file becomes a view `slice_NAME` too.

A slices file (TOML):

    [slices.night]
    where = "time_of_day = 'night'"      # a condition on the `clips` view
    weight = 3.0                         # training draws its clips 3x per epoch (default 1)
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dojo.config import MAX_CONFIG_BYTES, check, load_toml, parse
from dojo.data import store
from dojo.data.catalog import TABLES, table_schema, table_schemas
from dojo.data.scenario import TAGS
from dojo.errors import ConfigError, DojoError

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
CLIPS_VIEW = """
CREATE VIEW clips AS
SELECT c.*, s.split, f.ego_speed_mps, f.max_objects_in_range,
       f.occupied_cells / (c.grid * c.grid) AS occupied_fraction,
       coalesce(o.objects, 0) AS objects, coalesce(o.cars, 0) AS cars,
       coalesce(o.trucks, 0) AS trucks, coalesce(o.pedestrians, 0) AS pedestrians,
       coalesce(o.cones, 0) AS cones, o.occlusion,
       k.mean_luma, k.bits_per_pixel, k.video_bytes
FROM clips_stored c
LEFT JOIN splits s USING (clip_hash)
LEFT JOIN (SELECT clip_hash, avg(ego_speed_mps) AS ego_speed_mps,
                  max(objects_in_range) AS max_objects_in_range,
                  avg(occupied_cells) AS occupied_cells
           FROM frames GROUP BY clip_hash) f USING (clip_hash)
LEFT JOIN (SELECT clip_hash, count(*) AS objects,
                  count(*) FILTER (WHERE class = 'car') AS cars,
                  count(*) FILTER (WHERE class = 'truck') AS trucks,
                  count(*) FILTER (WHERE class = 'pedestrian') AS pedestrians,
                  count(*) FILTER (WHERE class = 'cone') AS cones,
                  avg(occlusion) AS occlusion
           FROM objects WHERE frames_in_range > 0 GROUP BY clip_hash) o USING (clip_hash)
LEFT JOIN (SELECT clip_hash, avg(mean_luma) AS mean_luma, avg(bits_per_pixel) AS bits_per_pixel,
                  sum(bytes) AS video_bytes
           FROM cameras GROUP BY clip_hash) k USING (clip_hash)
"""


@dataclass(frozen=True, kw_only=True)
class Slice:
    """A named subset of clips: `where` is a SQL condition on the `clips` view; `weight` how
    many times per epoch training draws its clips' windows (rounded; a clip in several slices
    takes the largest; `dojo.data.subset` repeats the clip in the training manifest)."""

    where: str
    weight: float = dataclasses.field(default=1.0, metadata=check(ge=1, le=100))


@dataclass(frozen=True, kw_only=True)
class SliceFile:
    slices: dict[str, Slice]


def load_slices(path: str) -> dict[str, Slice]:
    """Parse a slices file; a missing or malformed one is one DojoError naming the field."""
    if not store.exists(path):
        raise DojoError(f"{path}: no slices file there (expected TOML with [slices.NAME] "
                        "tables holding `where`)")
    data = load_toml(store.read_bytes(path, limit=MAX_CONFIG_BYTES), path)
    slices = dict(parse(SliceFile, data, path).slices)
    if not slices:
        raise ConfigError(path, "slices", {}, "at least one [slices.NAME] table")
    for name in slices:
        if not _NAME.match(name):
            raise ConfigError(path, f"slices.{name}", name, "a name of letters, digits and _")
    _check_where(slices, path)
    return slices


def _check_where(slices: dict[str, Slice], source: str) -> None:
    """Each slice's `where` bound against empty tables of the catalog's layout, when the file
    is read: a condition that does not parse or names no column of `clips` is refused before
    any work (`dojo train` trained for minutes before its evaluation made the views)."""
    import duckdb

    con = duckdb.connect()
    for name, schema in table_schemas().items():
        con.register("clips_stored" if name == "clips" else name, schema.empty_table())
    con.execute(CLIPS_VIEW)
    add_slices(con, slices, source)


def tag_slices(con: Any) -> dict[str, Slice]:
    """One slice per tag value present in the catalog (`scenario_urban`, `weather_rain`,
    `time_of_day_night`...): the default slices of an evaluation."""
    out = {}
    for key in TAGS:
        rows = con.execute(f"SELECT DISTINCT {key} FROM clips WHERE {key} IS NOT NULL "
                           f"ORDER BY 1").fetchall()
        for (value,) in rows:
            if _NAME.match(f"x{value}"):
                out[f"{key}_{value}"] = Slice(where=f"{key} = '{value}'")
    return out


def connect(catalog: str, slices: dict[str, Slice] | None = None) -> Any:
    """A DuckDB connection with the catalog's views (module docstring) and a `slice_NAME`
    view per slice. A missing catalog is a DojoError naming it."""
    import duckdb

    con = duckdb.connect()
    # DuckDB's own bounds (its buffer pool, its threads) and no progress bar on stdout
    con.execute(f"SET memory_limit = '{QUERY_MEMORY_BYTES}B'")
    con.execute(f"SET threads = {min(os.cpu_count() or 1, QUERY_THREADS)}")
    con.execute("SET enable_progress_bar = false")
    fs, path = store.resolve(catalog)
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    if not local:
        con.register_filesystem(fs)
    for name in TABLES:
        url = store.join(catalog, f"{name}.parquet")
        table_schema(catalog, name)  # missing, unreadable or another layout: named here
        where = store.join(path, f"{name}.parquet") if local else url
        view = "clips_stored" if name == "clips" else name
        con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet('{_quote(where)}')")
    con.execute(CLIPS_VIEW)
    add_slices(con, slices or {})
    return con


def add_slices(con: Any, slices: dict[str, Slice], source: str = "slices") -> None:
    """A view `slice_NAME` per slice; a `where` that does not run, or that ends the view's
    statement and starts another, is a ConfigError naming `source` and the slice."""
    import duckdb

    for name, sl in slices.items():
        sql = f"CREATE VIEW slice_{name} AS SELECT * FROM clips WHERE {sl.where}"
        try:
            if len(con.extract_statements(sql)) != 1:  # "1=1; DROP VIEW clips" ran both
                raise ConfigError(source, f"slices.{name}.where", sl.where, "one SQL condition "
                                  "on the clips view, not a second statement after ';'")
            con.execute(sql)
            con.execute(f"DESCRIBE SELECT * FROM slice_{name}").fetchall()  # binds, no scan
        except duckdb.Error as err:
            raise ConfigError(source, f"slices.{name}.where", sl.where,
                              f"a SQL condition on the clips view ({_first_line(err)})") from None


MAX_ROWS = 1_000_000  # rows one query may print
MAX_RESULT_BYTES = 256 << 20  # Python bytes of the rows one query may hold (sys.getsizeof)
QUERY_MEMORY_BYTES = 2 << 30  # DuckDB's memory_limit and the address space a query may add
QUERY_THREADS = 4
FETCH_ROWS = 10_000  # rows per batch fetched, so the byte cap stops within one batch
QUERY_LIMIT_S = 300.0  # one query's wall time (100,000 clips take under 1 s: docs/benchmarks.md)


def run_sql(con: Any, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of one SELECT; anything else, or bad SQL, is a DojoError."""
    import duckdb

    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as err:
        raise DojoError(f"bad SQL: {_first_line(err)}") from None
    if len(statements) != 1:
        raise DojoError(f"bad SQL: expected one statement, got {len(statements)}")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise DojoError(f"bad SQL: only SELECT queries run on the catalog, not "
                        f"{statements[0].type.name}")
    import threading

    timer = threading.Timer(QUERY_LIMIT_S, con.interrupt)  # count(*) over range(10^13): hours
    timer.daemon = True
    timer.start()
    try:
        with _address_space(QUERY_MEMORY_BYTES):
            result = con.execute(sql)
            rows = _fetch(result)
    except (duckdb.OutOfMemoryException, MemoryError):
        # repeat('x', 2e9) is built outside DuckDB's pool: the address-space cap stops it
        raise DojoError(f"the query needs more than {QUERY_MEMORY_BYTES >> 20:,} MiB of memory "
                        "and was stopped; narrow it with WHERE, LIMIT or smaller values") from None
    except duckdb.InterruptException:
        raise DojoError(f"the query ran past {QUERY_LIMIT_S:g} s and was stopped; narrow it "
                        "with WHERE, LIMIT or fewer joins") from None
    except duckdb.Error as err:
        raise DojoError(f"bad SQL: {_first_line(err)}") from None
    finally:
        timer.cancel()
    return [d[0] for d in result.description], rows


def _fetch(result: Any) -> list[tuple[Any, ...]]:
    """The rows of `result`, fetched in batches and stopped at `MAX_ROWS` rows or
    `MAX_RESULT_BYTES` bytes held in Python (a DojoError naming the cap)."""
    rows: list[tuple[Any, ...]] = []
    held = 0
    while batch := result.fetchmany(FETCH_ROWS):
        rows += batch
        # each cell's bytes and each row's tuple (map over C calls: 1M cells in about 0.3 s)
        held += sum(map(sys.getsizeof, itertools.chain.from_iterable(batch))) \
            + len(batch) * sys.getsizeof(batch[0])
        if len(rows) > MAX_ROWS or held > MAX_RESULT_BYTES:
            # the query still streams: closed now, else its threads abort the exit (SIGABRT)
            result.close()
        if len(rows) > MAX_ROWS:  # memory bounded by this, not by the query (range(10^10))
            raise DojoError(f"the query returns more than {MAX_ROWS:,} rows; narrow it with "
                            "WHERE, LIMIT or an aggregate")
        if held > MAX_RESULT_BYTES:
            raise DojoError(f"the query's rows pass {MAX_RESULT_BYTES >> 20:,} MiB in memory "
                            "(the cap); narrow it with WHERE, LIMIT, fewer columns or an "
                            "aggregate")
    return rows


@contextlib.contextmanager
def _address_space(extra: int) -> Iterator[None]:
    """Cap this process's address space at its size now plus `extra` bytes while the block
    runs (Linux; elsewhere no cap): an allocation past it fails instead of swapping."""
    size = _address_size()
    if size is None:
        yield
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = size + extra
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft != resource.RLIM_INFINITY and soft <= cap:
        yield
        return
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def slice_members(con: Any, slices: dict[str, Slice], column: str = "clip_hash"
                  ) -> dict[str, set[Any]]:
    """Values of `column` (of the clips view) in each slice."""
    return {name: {r[0] for r in con.execute(f"SELECT {column} FROM slice_{name}").fetchall()}
            for name in slices}


def _quote(text: str) -> str:
    return text.replace("'", "''")


def _first_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


def _address_size() -> int | None:
    """This process's address space now, bytes (None where /proc or `resource` is missing)."""
    try:
        import resource  # noqa: F401  (Unix only)

        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmSize:"))
    except (ImportError, OSError, StopIteration, ValueError):
        return None
