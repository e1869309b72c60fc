"""Measured runs a user brings to `dojo calibrate`: reading the CSV, and writing the fitted system.

The CSV has a header row and one run per row. Columns (any order):
- `model` (a zoo name), `plan` (as `--plan` takes it; quote it, it holds commas), `batch` (global
  batch in samples), `seconds` (measured seconds per training step, 1e-9 to 3.2e7): required;
- `seq` (sequence length), `stack` (software stack, e.g. `megatron-lm`, `fsdp-eager`),
  `overrides` (model settings as `--set` takes them, `key=value` joined by `;`), `devices`
  (devices the run used; default the plan's dp x tp x pp): optional.
Every problem is one DojoError naming the file, the row, the column and the value.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dojo.config import NUMBER_FORM, ascii_float, one_line_name, parse_scalar, whole_number
from dojo.errors import DojoError

REQUIRED = ("model", "plan", "batch", "seconds")
OPTIONAL = ("seq", "stack", "overrides", "devices")
# The fit simulates every run a few times per iteration: a bounded input keeps it bounded.
MAX_RUNS = 256
MAX_CSV_BYTES = 1 << 20
# A measured step: from a nanosecond (no kernel launches faster) to a year.
MIN_SECONDS, MAX_SECONDS = 1e-9, 3.2e7


@dataclass(frozen=True)
class Run:
    """One measured training run: what, how, and the measured seconds per step."""

    model: str
    plan: str
    batch: int
    seconds: float
    seq: int | None = None
    stack: str = ""
    overrides: Mapping[str, Any] = field(default_factory=dict)
    devices: int | None = None
    label: str = ""  # where it came from: "runs.csv row 3", or a validation case id


def read_runs(path: str | Path) -> list[Run]:
    """The runs in a CSV file (see the module docstring); DojoError on the first bad cell."""
    name = str(path)
    p = Path(path)
    if not p.is_file():
        what = ("no such file" if not p.exists() else "is a folder" if p.is_dir()
                else "is a device or special file")
        raise DojoError(f"--runs {name}: {what}: expected a CSV file of measured runs")
    if p.stat().st_size > MAX_CSV_BYTES:
        raise DojoError(f"--runs {name}: {p.stat().st_size:,} bytes: expected at most "
                        f"{MAX_CSV_BYTES:,} (a CSV of at most {MAX_RUNS} runs)")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DojoError(f"--runs {name}: not UTF-8 text ({err.reason})") from None
    except OSError as err:
        raise DojoError(f"--runs {name}: cannot read the file ({err.strerror or err})") from None
    try:
        rows = list(csv.reader(text.splitlines()))
    except csv.Error as err:  # a cell past the csv module's field limit (131,072 characters)
        raise DojoError(f"--runs {name}: not a CSV of runs ({err})") from None
    if not rows or not any(c.strip() for c in rows[0]):
        raise DojoError(f"{name}: empty: expected a header row with the columns "
                        f"{', '.join(REQUIRED)}")
    header = [c.strip().lower() for c in rows[0]]
    for i, col in enumerate(header):
        if col not in REQUIRED + OPTIONAL:
            raise DojoError(f"{name}: row 1, column {i + 1} = {col!r}: expected one of "
                            f"{', '.join(REQUIRED + OPTIONAL)}")
        if header.index(col) != i:
            raise DojoError(f"{name}: row 1, column {i + 1} = {col!r}: expected each column once")
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise DojoError(f"{name}: row 1 (header): column '{missing[0]}' is missing: expected "
                        f"the columns {', '.join(REQUIRED)}")
    body = [(n, r) for n, r in enumerate(rows[1:], start=2) if any(c.strip() for c in r)]
    if not body:
        raise DojoError(f"{name}: no runs: expected at least one row after the header")
    if len(body) > MAX_RUNS:
        raise DojoError(f"{name}: {len(body)} runs: expected at most {MAX_RUNS}")
    return [_run(name, n, header, r) for n, r in body]


def _run(name: str, row: int, header: list[str], cells: list[str]) -> Run:
    if len(cells) != len(header):
        raise DojoError(f"{name}: row {row}: {len(cells)} cells: expected {len(header)}, one per "
                        f"column of the header (quote a plan, it holds commas)")
    raw = {col: cell.strip() for col, cell in zip(header, cells)}

    def bad(col: str, expected: str) -> DojoError:
        return DojoError(f"{name}: row {row}, column '{col}' = {raw[col]!r}: expected {expected}")

    def whole(col: str) -> int | None:
        if not raw.get(col):
            if col in REQUIRED:
                raise bad(col, "a value")
            return None
        number = whole_number(raw[col])
        if number is None or number < 1:
            raise bad(col, "a whole number >= 1")
        return number

    for col in ("model", "plan"):
        if not raw[col]:
            raise bad(col, "a value")
    if raw.get("stack") and not one_line_name(raw["stack"]):  # written as a [gpu.stacks] name
        raise bad("stack", "a stack name of printable characters on one line, e.g. megatron-lm")
    seconds = ascii_float(raw["seconds"])
    if seconds is None:
        raise bad("seconds", f"measured seconds per step, a number > 0 in {NUMBER_FORM}")
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:  # NaN too; 1e-320 s made the fit's logs inf
        raise bad("seconds", f"measured seconds per step, a number from {MIN_SECONDS:g} to "
                  f"{MAX_SECONDS:g}")
    overrides: dict[str, Any] = {}
    for item in (i.strip() for i in raw.get("overrides", "").split(";") if i.strip()):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise bad("overrides", "model settings key=value joined by ';', e.g. layers=4;seq=512")
        if key.strip() in overrides:
            raise bad("overrides", f"each setting once ({key.strip()} is given twice)")
        overrides[key.strip()] = parse_scalar(value.strip())
    return Run(model=raw["model"], plan=raw["plan"], batch=whole("batch") or 0, seconds=seconds,
               seq=whole("seq"), stack=raw.get("stack", ""), overrides=overrides,
               devices=whole("devices"), label=f"{name} row {row}")


def toml_text(data: Mapping[str, Any], header: str = "") -> str:
    """`data` (tables of strings, numbers, booleans and lists) as TOML, scalars before tables."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]

    def table(prefix: str, d: Mapping[str, Any]) -> None:
        scalars = [(k, v) for k, v in d.items() if not isinstance(v, Mapping)]
        tables = [(k, v) for k, v in d.items() if isinstance(v, Mapping)]
        if prefix and (scalars or not tables):
            lines.extend(["", f"[{prefix}]"])
        lines.extend(f"{_key(k)} = {_value(v)}" for k, v in scalars)
        for k, v in tables:
            table(f"{prefix}.{_key(k)}" if prefix else _key(k), v)

    table("", data)
    return "\n".join(lines).lstrip("\n") + "\n"


def _key(key: str) -> str:
    bare = key and all(c.isalnum() or c in "-_" for c in key) and key.isascii()
    return key if bare else json.dumps(key)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and math.isfinite(v) and abs(v) >= 1e6:
        mantissa, _, exponent = f"{v:.15e}".partition("e")
        mantissa = mantissa.rstrip("0")
        text = f"{mantissa}0e{int(exponent)}" if mantissa.endswith(".") else \
            f"{mantissa}e{int(exponent)}"
        return text if float(text) == v else repr(v)
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {type(v).__name__}")  # a bug in dojo, not input


def fitted_system_text(system: str, name: str, values: Mapping[str, float],
                       stacks: Mapping[str, Mapping[str, float]], note: str) -> str:
    """The TOML of `system` (a shipped name or a file, `extends` merged, any `:N` count
    dropped) renamed `name`, with `values` merged into its leaf's `calibration` table and
    `stacks` into its `stacks` tables: a complete system file that `--system` loads."""
    from dojo.hardware.loader import system_data

    base = system
    if ":" in system and not Path(system).exists():
        base = system.rpartition(":")[0]
    data, source = system_data(base)
    leaf_name = data["hierarchy"][0]
    leaf = dict(data[leaf_name])
    leaf["calibration"] = {**leaf.get("calibration", {}), **values}
    merged = {k: dict(v) for k, v in leaf.get("stacks", {}).items()}
    for stack, fields in stacks.items():
        merged[stack] = {**merged.get(stack, {}), **fields}
    if merged:
        leaf["stacks"] = merged
    out = {**data, "name": name, leaf_name: leaf,
           "title": f"{data['title']}, calibrated ({note})",
           "source": f"{data['source']}; efficiencies fitted by dojo calibrate ({note})"}
    header = (f"{name}: {source} with efficiencies fitted by `dojo calibrate` ({note}).\n"
              f"[{leaf_name}.calibration] overrides the '{leaf.get('cost_model', '')}' cost "
              f"model; [{leaf_name}.stacks.NAME] overrides it again under --stack NAME.")
    return toml_text(out, header)
