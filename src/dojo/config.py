"""Typed, self-validating configuration: plain mappings (TOML, JSON, CLI) into frozen dataclasses.

Every config type in dojo is a frozen dataclass whose fields carry their checks in metadata made
by `check(...)`. `parse(cls, data, source)` walks the mapping, rejects unknown keys, missing
fields, wrong types and out-of-range values with a `ConfigError` that names the source, the dotted
field path and the value. Nothing here uses `assert`: user input is checked, not trusted.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from dojo.errors import MISSING, ConfigError, DojoError

T = TypeVar("T")
# Magnitude of a non-zero float field. Physical figures of any system (1e-12 J/byte, 1e18
# FLOP/s) sit far inside; outside, the simulator's sums and quotients over 2^40 devices would
# reach inf and print as NaN, and 1e-320 is a subnormal whose reciprocal is inf.
MAX_MAGNITUDE = 1e30
# A configuration file (system, slices, manifest) is kilobytes; reads stop past this bound so a
# huge or endless file is an error, not all of memory.
MAX_CONFIG_BYTES = 4 << 20


def check(
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    choices: tuple[str, ...] | None = None,
    unit: str = "",
) -> dict[str, Any]:
    """Field metadata: bounds (`gt`, `ge`, `le`), allowed strings, and the unit for messages."""
    return {"gt": gt, "ge": ge, "le": le, "choices": choices, "unit": unit}


def parse(cls: type[T], data: Any, source: str, prefix: str = "") -> T:
    """Build dataclass `cls` from mapping `data`, validating every field.

    `source` names where the data came from (a file path or "--plan"); `prefix` is the dotted path
    of `data` inside that source. Raises `ConfigError` on the first problem found.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(source, prefix, data, f"a table of {cls.__name__} fields")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(source, _join(prefix, str(key)), data[key],
                              f"one of the keys {known}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        path = _join(prefix, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(source, path, MISSING, f"a value ({_describe(hints[name])})")
            continue
        values[name] = _convert(hints[name], data[name], source, path, f.metadata)
    return cls(**values)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _convert(tp: Any, value: Any, source: str, path: str, meta: Mapping[str, Any]) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        if value is None and len(options) < len(get_args(tp)):
            return None
        return _convert(options[0], value, source, path, meta)
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, source, path)  # type: ignore[arg-type]
    if origin is tuple:
        return _convert_tuple(tp, value, source, path, meta)
    if origin in (dict, Mapping):
        _, val_tp = get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(source, path, value, "a table")
        return types.MappingProxyType(
            {str(k): _convert(val_tp, v, source, _join(path, str(k)), meta)
             for k, v in value.items()}
        )
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, path, value, "on or off (true or false)")
        return value
    if tp in (int, float):
        return _number(tp, value, source, path, meta)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(source, path, value, "a string")
        choices = meta.get("choices")
        if choices and value not in choices:
            raise ConfigError(source, path, value, f"one of {', '.join(choices)}")
        return value
    raise TypeError(f"config type {tp!r} at {path} is not supported")  # a bug in dojo, not input


def _convert_tuple(tp: Any, value: Any, source: str, path: str, meta: Mapping[str, Any]) -> Any:
    args = get_args(tp)
    if not isinstance(value, list | tuple):
        raise ConfigError(source, path, value, f"a list ({_describe(tp)})")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(
            _convert(args[0], v, source, f"{path}[{i}]", meta) for i, v in enumerate(value)
        )
    if len(value) != len(args):
        raise ConfigError(source, path, value, f"a list of {len(args)} items ({_describe(tp)})")
    return tuple(
        _convert(a, v, source, f"{path}[{i}]", meta) for i, (a, v) in enumerate(zip(args, value))
    )


def _number(tp: type, value: Any, source: str, path: str, meta: Mapping[str, Any]) -> Any:
    unit = f" {meta['unit']}" if meta.get("unit") else ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        form = f" in {NUMBER_FORM}" if foreign_number(value) else ""
        raise ConfigError(source, path, value,
                          f"{'an integer' if tp is int else 'a number'}{unit}{form}")
    if tp is int and not isinstance(value, int):
        raise ConfigError(source, path, value, f"an integer{unit}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(source, path, value, f"a finite number{unit}")
    gt, ge, le = meta.get("gt"), meta.get("ge"), meta.get("le")
    if gt is not None and not value > gt:
        raise ConfigError(source, path, value, f"a number > {gt:g}{unit}")
    if ge is not None and not value >= ge:
        raise ConfigError(source, path, value, f"a number >= {ge:g}{unit}")
    if le is not None and not value <= le:
        raise ConfigError(source, path, value, f"a number <= {le:g}{unit}")
    if tp is float and value != 0 and not 1 / MAX_MAGNITUDE <= abs(value) <= MAX_MAGNITUDE:
        raise ConfigError(source, path, value, f"0 or a magnitude from 1e-30 to 1e30{unit}")
    return tp(value)


def _describe(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return f"a {tp.__name__} table"  # type: ignore[union-attr]
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# A number typed on the command line (or in a runs CSV) is ASCII: Python's int() and float()
# also read other scripts' digits ('１６', '١٦') and '_' separators ('1_6'), which a terminal
# shows as something else than the number used (a fullwidth 16, or 16 where 1 and 6 were two
# values). These are the forms dojo reads; anything else stays text and is refused by the field.
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
                         r"|inf|infinity|nan)", re.IGNORECASE)
NUMBER_FORM = "ASCII digits 0-9 without '_' separators"


def ascii_int(text: str) -> int | None:
    """`text` (spaces around allowed) as an int when it is an optionally signed run of ASCII
    digits, else None; also None past Python's 4,300-digit conversion limit."""
    text = text.strip()
    if not _INT_TEXT.fullmatch(text):
        return None
    try:
        return int(text)
    except ValueError:  # over sys.get_int_max_str_digits()
        return None


def ascii_float(text: str) -> float | None:
    """`text` as a float when written with ASCII digits (or inf/nan), else None."""
    text = text.strip()
    return float(text) if _FLOAT_TEXT.fullmatch(text) else None


def foreign_number(value: object) -> bool:
    """True for text Python would read as a number that dojo's grammar refuses ('１６', '1_6'),
    so an error can say why '１６' is not an integer."""
    if not isinstance(value, str) or ascii_float(value) is not None:
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def parse_scalar(raw: str) -> Any:
    """A command-line value: on/off/true/false/yes/no as bool, then int, then float (each in
    ASCII digits, see `ascii_int`), else str. A number float cannot hold (`1e400`, 5,000
    digits) stays the text typed, so an error quotes it rather than `inf`."""
    lowered = raw.lower()
    if lowered in ("true", "on", "yes"):
        return True
    if lowered in ("false", "off", "no"):
        return False
    whole = ascii_int(raw)
    if whole is not None:
        return whole
    value = ascii_float(raw)
    if value is None or (math.isinf(value) and "inf" not in lowered):
        return raw
    return value


def one_line_name(value: object) -> bool:
    """True for a string that is not blank and holds only printable characters: a name that is
    printed in tables, reports, error lines and written back into files (no line break, tab,
    NUL or terminal escape)."""
    return isinstance(value, str) and bool(value.strip()) and value.isprintable()


def whole_number(text: str) -> int | None:
    """`text` as a whole number when it is ASCII digits only (no sign, no spaces), else None.
    (`str.isdigit` is true for "²", which `int` refuses, and for other scripts' digits.)"""
    return int(text) if text.isascii() and text.isdigit() else None


def load_toml(raw: bytes | str, source: str) -> dict[str, Any]:
    """Parse a TOML document from a user's file; every way it can be malformed (not UTF-8, bad
    syntax, nesting deeper than the parser's recursion) is one DojoError naming `source`."""
    import tomllib

    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise DojoError(f"{source}: not valid TOML: {err}") from None
    except RecursionError:
        raise DojoError(f"{source}: not valid TOML: arrays or tables nested too deep") from None
    except MemoryError:
        raise DojoError(f"{source}: {len(raw):,} bytes: too large to parse in memory") from None


def load_json(raw: bytes | str, source: str) -> Any:
    """Parse a JSON document from a file dojo or a user wrote; not UTF-8, bad syntax, nesting
    deeper than the parser's recursion are one DojoError naming `source`."""
    import json

    try:
        return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise DojoError(f"{source}: not valid JSON ({err})") from None
    except RecursionError:
        raise DojoError(f"{source}: not valid JSON (arrays or objects nested too deep)") \
            from None
    except MemoryError:
        raise DojoError(f"{source}: {len(raw):,} bytes: too large to parse in memory") from None


def read_toml_file(path: str | Path, source: str) -> dict[str, Any]:
    """`load_toml` of a local file, read bounded; a file that cannot be read (a folder,
    permissions, an I/O error) or is over MAX_CONFIG_BYTES is a DojoError naming `source` too."""
    try:
        with Path(path).open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise DojoError(f"{source}: cannot read the file ({err.strerror or err})") from None
    check_config_size(raw, source)
    return load_toml(raw, source)


def check_config_size(raw: bytes, source: str) -> None:
    """DojoError when `raw`, read as at most MAX_CONFIG_BYTES + 1 bytes, is past the bound."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise DojoError(f"{source}: over {MAX_CONFIG_BYTES:,} bytes: expected a configuration "
                        "file (a system or slices file is a few kilobytes)")
