"""`dojo data index | query | mine`: the clip catalog's verbs (parsers added by `cmd_data`).

    dojo data index DIR [--catalog CAT] [--split S]
    dojo data query "SQL" [--catalog CAT] [--slices FILE] [--format table|json|csv]
    dojo data query --slice NAME --slices FILE [--catalog CAT] [--format ...]
    dojo data mine RUN --slice NAME --budget N [--slices FILE] [--pool SPLIT] [--catalog CAT]
                   [--by score|random] [--seed S]
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from dojo.cli.common import int_flag, print_json
from dojo.errors import ConfigError, DojoError, one_line

FORMATS = ("table", "json", "csv")


def add_catalog_parsers(sub: Any) -> None:
    index = sub.add_parser("index", help="add a clip set (yours or synthetic) to a catalog")
    index.add_argument("root", help="clip set folder or URL (with manifest.json)")
    index.add_argument("--catalog", default="", help="catalog folder or URL (default DIR/catalog)")
    index.add_argument("--split", default="", help="split of the clips (default: DIR's name)")
    index.set_defaults(run=_index)

    query = sub.add_parser("query", help="SQL over the clip catalog (DuckDB)")
    query.add_argument("sql", nargs="?", default="", help="one SELECT over the views clips, "
                       "cameras, frames, objects, splits, slice_NAME")
    query.add_argument("--catalog", default="catalog", help="catalog folder or URL "
                       "(default ./catalog)")
    query.add_argument("--slices", default="", help="slices file (TOML): each slice becomes a "
                       "view slice_NAME")
    query.add_argument("--slice", default="", help="list the clips of this slice")
    query.add_argument("--format", default="table", help="table, json or csv (default table)")
    query.set_defaults(run=_query)

    mine = sub.add_parser("mine", help="pick unused clips like a run's weak slice: a new "
                          "dataset version")
    mine.add_argument("run_dir", metavar="RUN", help="a `dojo train occupancy` output folder")
    mine.add_argument("--slice", required=True, help="the slice to improve")
    mine.add_argument("--budget", required=True, help="clips to add")
    mine.add_argument("--slices", default="", help="slices file (default: one slice per tag)")
    mine.add_argument("--pool", default="pool", help="split to mine from (default pool)")
    mine.add_argument("--catalog", default="", help="catalog (default RUN/catalog)")
    mine.add_argument("--by", default="score", help="score (the model's errors on clips like "
                      "the slice) or random (the control: as many unused pool clips at random)")
    mine.add_argument("--seed", default=None, help="--by random's draw (default: the run's "
                      "seed + 1, as round 1 of `train --mine-by random`)")
    mine.set_defaults(run=_mine)


def _index(args: argparse.Namespace) -> int:
    from dojo.data.catalog import (
        check_catalog_apart,
        default_catalog,
        index_set,
        read_set_manifest,
    )

    manifest = read_set_manifest(args.root)  # a bad set is named before the catalog
    catalog = args.catalog or default_catalog(args.root)
    check_split(args.split)
    check_catalog_folder(catalog)
    check_catalog_apart(args.root, manifest, catalog)

    def progress(done: int, total: int) -> None:
        print(f"dojo data index: {done}/{total} clips", file=sys.stderr, flush=True)

    result = index_set(args.root, args.catalog, args.split, progress)
    for s in result.skipped:
        print(f"dojo data index: skipped {s.clip}: {s.file}: {s.reason}", file=sys.stderr)
    print_json({"catalog": result.catalog, "dataset": result.dataset, "split": result.split,
                "clips": len(result.clips), "skipped": [
                    {"clip": s.clip, "file": s.file, "reason": s.reason} for s in result.skipped]})
    return 1 if result.skipped else 0


def check_split(split: str) -> None:
    """A `--split` that is blank (' ': a split no query names by mistake) or holds a control
    character is refused before any clip is written; "" is the default (the set's name)."""
    if split and (not split.strip() or not split.isprintable()):
        raise ConfigError("--split", "split", split, "a split name that is not blank, in "
                          "printable characters (leave it out for the set's name)")


def check_catalog_folder(catalog: str) -> None:
    """A local catalog folder that is a file or cannot be made is refused before any clip is
    read (a folder made to find out is removed again); URLs are left to their store."""
    import shutil
    from pathlib import Path

    from dojo.data import store

    if not catalog.strip():  # ' ' made a catalog folder named by a blank
        raise ConfigError("--catalog", "catalog", catalog, "a folder path, not blank")
    if store.is_url(catalog):
        return
    path = Path(catalog)
    if path.exists() and not path.is_dir():
        raise ConfigError("--catalog", "catalog", catalog, "a folder (this is a file)")
    missing = next((p for p in (*reversed(path.parents), path) if not p.exists()), None)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError("--catalog", "catalog", catalog, f"a folder that can be made "
                          f"({err.strerror or err})") from None
    finally:
        if missing is not None:
            shutil.rmtree(missing, ignore_errors=True)


def _query(args: argparse.Namespace) -> int:
    from dojo.data.query import connect, load_slices, run_sql

    if args.format not in FORMATS:
        raise ConfigError("--format", "format", args.format, f"one of {', '.join(FORMATS)}")
    slices = load_slices(args.slices) if args.slices else {}
    if args.slice and args.slice not in slices:
        known = ", ".join(sorted(slices)) or "none: pass --slices FILE"
        raise ConfigError("--slice", "slice", args.slice, f"a slice of the file ({known})")
    if bool(args.sql) == bool(args.slice):
        raise DojoError("dojo data query: give either SQL or --slice NAME (with --slices FILE)")
    con = connect(args.catalog, slices)
    sql = args.sql or f"SELECT name, dataset, split, scenario, weather, time_of_day, clip_hash " \
                      f"FROM slice_{args.slice} ORDER BY dataset, name"
    failure = None
    try:
        columns, rows = run_sql(con, sql)
    except DojoError as err:
        failure = str(err)
    finally:
        con.close()
    if failure is not None:
        # The refused query's frames hold DuckDB objects; freed here, not at interpreter exit,
        # where nanobind prints a "leaked instances" report after the one-line error.
        del con
        import gc

        gc.collect()
        raise DojoError(failure)
    sys.stdout.write(render(columns, rows, args.format))
    return 0


def render(columns: list[str], rows: list[tuple[Any, ...]], fmt: str) -> str:
    """Rows as an aligned text table, JSON (a list of objects) or CSV."""
    if fmt == "json":
        import json

        records = [dict(zip(columns, (_plain(v) for v in row))) for row in rows]
        return json.dumps(records, indent=1, default=str) + "\n"
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[_plain(v) for v in row] for row in rows])
        return buf.getvalue()
    cells = [[one_line(c) for c in columns]] + [[_text(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + f"\n({len(rows)} rows)\n"


def _plain(value: Any) -> Any:
    """`value` with every NaN and infinity, however deep in lists and structs, as None: JSON
    has neither (json.dumps would write the invalid tokens NaN and Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _text(value: Any) -> str:
    """One table cell on one line: a line break or control character in a text is escaped."""
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.4g}"
    return one_line(str(value))


def _mine(args: argparse.Namespace) -> int:
    budget = int_flag(args.budget, "--budget")
    if budget < 1:
        raise ConfigError("--budget", "budget", budget, "at least 1 clip")
    if args.by not in ("score", "random"):
        raise ConfigError("--by", "by", args.by, "score or random")
    seed = None
    if args.seed is not None:
        seed = int_flag(args.seed, "--seed")
        if not 0 <= seed < 2**63:
            raise ConfigError("--seed", "seed", seed, "0 <= seed < 2^63")
        if args.by != "random":
            raise ConfigError("--seed", "seed", seed, "only with --by random (scoring is "
                              "deterministic)")
    from dojo.train.mine import mine_run

    print_json(mine_run(args.run_dir, args.slice, budget, slices_file=args.slices,
                        pool=args.pool, catalog=args.catalog, by=args.by, seed=seed))
    return 0
