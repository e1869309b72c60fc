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
    """Parse repeated `key=value` arguments; values become int, float, bool or str."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(source, "", item, "key=value")
        out[key.strip()] = parse_scalar(raw.strip())
    return out
