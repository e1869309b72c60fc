"""Helpers shared by subcommands: JSON output and `--set key=value` parsing."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from dojo.config import NUMBER_FORM, ascii_float, ascii_int, parse_scalar
from dojo.errors import ConfigError


def integer(text: str) -> int:
    """argparse `type=` for an integer flag: ASCII digits only (`config.ascii_int`), so
    `--batch １６` or `--batch 1_6` is refused as argparse refuses `--batch abc`."""
    value = ascii_int(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer in {NUMBER_FORM}")
    return value


def number(text: str) -> float:
    """argparse `type=` for a float flag, in ASCII digits like `integer`; inf and nan pass here
    and are refused by the command's range check, which names the range."""
    value = ascii_float(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number in {NUMBER_FORM}")
    return value


# Rows a `--top` flag may list (`dojo plan`, `dojo inspect`). In `plan` each listed row is a
# simulated plan, and the search simulates until it holds --top of them, so --top past the plan
# count simulates every plan (mlp on 8 GPUs: 2,526 plans, 46 CPU-s, where --top 5 simulates 9
# in 4 s; a 405B model on a large cluster: hours). `inspect` takes the same range.
MAX_TOP = 100


def top_flag(value: int | None, why: str, least: int = 1) -> int:
    """`value` of `--top` when it is from `least` to `MAX_TOP`; ConfigError naming `why`
    otherwise."""
    if value is None or not least <= value <= MAX_TOP:
        raise ConfigError("--top", "top", value, f"from {least} to {MAX_TOP} ({why})")
    return value


def int_flag(text: str, flag: str) -> int:
    """`text`, the value of `flag`, as an integer in ASCII digits; ConfigError otherwise (for
    flags parsed by the command, so the error is the one-line `dojo: error:` form)."""
    value = ascii_int(text)
    if value is None:
        raise ConfigError(flag, flag.lstrip("-"), text, f"an integer in {NUMBER_FORM}")
    return value


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
    seen: dict[tuple[str, str], str] = {}
    for name in names:
        key = _system_key(name)
        if key in seen:  # the same row twice: a typo for another system, most likely
            same = "given twice" if seen[key] == name else f"the same as {seen[key]}"
            raise ConfigError(flag, flag.lstrip("-"), text, f"each system once ({name} is {same})")
        seen[key] = name
    return names


def _system_key(name: str) -> tuple[str, str]:
    """What makes two `--systems` items one system: the file (resolved, so ./h.toml is h.toml)
    or shipped name, and the `:N` device count as written."""
    import os

    base, count = name, ""
    if ":" in name and not os.path.exists(name):
        base, _, count = name.rpartition(":")
    return (os.path.realpath(base) if os.path.isfile(base) else base, count)


def int_list(text: str, flag: str, least: int = 1) -> list[int]:
    """The integers in a comma-separated value like `8,16,32`, each >= `least`."""
    values = [ascii_int(item) for item in text.split(",")]
    if not values or any(v is None or v < least for v in values):
        raise ConfigError(flag, flag.lstrip("-"), text,
                          f"comma-separated integers >= {least}, like 8,16,32, in {NUMBER_FORM}")
    twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if twice is not None:  # the same point twice: a typo for another count, most likely
        raise ConfigError(flag, flag.lstrip("-"), text, f"each value once ({twice} is given "
                          "twice)")
    return values  # type: ignore[return-value]  # None refused above


def system_inputs(flag: str, system: str) -> list[tuple[str, str]]:
    """(flag, path) for `report.html.check_outputs_apart`: the system given to `flag` and each
    local file its `extends` chain reads, so no output replaces a file the system is built
    from."""
    from dojo.hardware.loader import system_files

    inputs = [(flag, system)]
    inputs += [(f"{flag} {system}, which extends", path) for path in system_files(system)[1:]]
    return inputs


def named_keys(text: str) -> set[str]:
    """The keys a plan text writes (`dp=2,tp=2` -> {'dp', 'tp'})."""
    return {item.partition("=")[0].strip() for item in text.split(",")}


def with_native_precision(text: str, spec: Any) -> tuple[str, str | None]:
    """`text` with `,precision=P` added where it names no precision and `spec` has no rate for
    the plan's default (bf16): P is the system's own (`default_precision`; fp32 on the `cpu`
    system). Returns the text and a note that says what was chosen, or None if nothing was."""
    from dojo.plan.plan import Plan
    from dojo.sim.simulate import default_precision

    native = default_precision(spec)
    if text == "auto" or "precision" in named_keys(text) or native == Plan().precision:
        return text, None
    return (f"{text},precision={native}",
            f"--plan gives no precision and {spec.name} has no {Plan().precision} rate, so "
            f"precision={native}")
