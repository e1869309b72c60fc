"""User-facing errors.

A `DojoError` is bad input or an impossible request: the CLI prints its message as one line on
stderr and exits with status 2, without a traceback. Anything else escaping is a bug in dojo.
"""

from __future__ import annotations

from typing import Any


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()
"""Stands for a required value that is absent, in `ConfigError`."""


class DojoError(Exception):
    """An error the user can fix; `str(err)` is one line that says what and where.

    Messages quote what the user typed (a system name, a path, a job id), which may hold a line
    break, a NUL or a terminal escape: `str` shows those escaped (`one_line`), so the error stays
    one line on every path (the CLI's stderr, the service's logs and answers)."""

    def __str__(self) -> str:
        return one_line(super().__str__())


def one_line(text: str) -> str:
    """`text` with every character that is not printable (line breaks, tabs, NUL, escapes,
    bidirectional overrides) written as its Python escape (`\\n`, `\\x00`, `\\u202e`)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


class ConfigError(DojoError):
    """A field of a configuration source (file or command line) holds a bad value.

    The message names the source, the dotted field path, the offending value, and what was
    expected, e.g. ``v1.toml: field 'chip.link.bytes_per_s' = -5: expected a number > 0``.
    """

    def __init__(self, source: str, field: str, value: Any, expected: str) -> None:
        self.source = source
        self.field = field
        self.value = value
        self.expected = expected
        where = f"field '{field}'" if field else "top level"
        if value is MISSING:
            super().__init__(f"{source}: {where} is missing: expected {expected}")
        else:
            super().__init__(f"{source}: {where} = {_short_repr(value)}: expected {expected}")


class UnknownNameError(DojoError):
    """A name (system, model, collective...) that no registry knows."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.known = known
        super().__init__(f"unknown {kind} '{name}'; known: {', '.join(known) or '(none)'}")


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
