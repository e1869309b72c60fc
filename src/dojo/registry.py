"""The one registry mechanism for things that plug in: systems, models, collectives, cost models.

A registry maps a name to a factory or an object. Lookups of unknown names raise
`UnknownNameError`, whose message lists the known names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from dojo.errors import DojoError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind; registration order is kept for listings."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register `entry` under `name`; a second registration of one name is an error."""
        if name in self._entries:
            raise DojoError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`."""

        def decorate(entry: T) -> T:
            return self.add(name, entry)

        return decorate

    def get(self, name: str) -> T:
        """The entry called `name`; raises `UnknownNameError` listing the known names."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
