"""Helpers shared by subcommands: JSON output and `--set key=value` parsing."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from dojo.config import parse_scalar
from dojo.errors import ConfigError


def print_json(obj: Any) -> None:
    """Write `obj` as indented JSON to stdout."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def parse_sets(items: Sequence[str] | None, source: str = "--set") -> dict[str, Any]:
    """Parse repeated `key=value` arguments; values become int, float, bool or str. A key
    given twice is a ConfigError (which value was meant?), as in `--plan`."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(source, "", item, "key=value")
        if key in out:
            raise ConfigError(source, key, item, f"each key once ({key} is already "
                              f"{out[key]!r})")
        out[key] = parse_scalar(raw.strip())
    return out


def system_list(text: str, flag: str) -> list[str]:
    """The names in a comma-separated `--systems` value; ConfigError when it names none or has
    an empty item (`v1,,tile`), so a typo never prints an empty table."""
    names = [name.strip() for name in text.split(",")]
    if not any(names) or not all(names):
        raise ConfigError(flag, flag.lstrip("-"), text,
                          "comma-separated system names like v1,h100-cluster:48, none empty")
    return names


def int_list(text: str, flag: str, least: int = 1) -> list[int]:
    """The integers in a comma-separated value like `8,16,32`, each >= `least`."""
    items = [item.strip() for item in text.split(",")]
    try:
        values = [int(item) for item in items]
    except ValueError:
        values = []
    if not values or any(v < least for v in values):
        raise ConfigError(flag, flag.lstrip("-"), text,
                          f"comma-separated integers >= {least}, like 8,16,32")
    return values
