"""Memos of pure functions of a `Graph`, keyed by the graph object itself.

A `Graph` is immutable, so a function of it (and of other hashable arguments) gives the same
result every time it is asked. Hashing a whole graph costs as much as walking it, so a memo
keys on the graph's identity instead and holds the graph with its result (an id is never
reused while the object lives). The compiler asks the same questions of one capture under
many plans (the plan search compiles one graph per tensor split, precision and fusion); the
memo answers them once. Each memo holds at most `size` entries and forgets them all when it
fills (a bound on memory, not a policy). Results are shared: callers must not mutate them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from dojo.graph.ir import Graph

R = TypeVar("R")
MEMOS: list[GraphMemo[Any]] = []  # every memo made, for `clear_all`


class GraphMemo(Generic[R]):
    """`fn(graph, *args)` computed once per (graph object, args); `args` must be hashable."""

    def __init__(self, fn: Callable[..., R], size: int = 64) -> None:
        self.fn = fn
        self.size = size
        self.held: dict[tuple[Hashable, ...], tuple[Graph, R]] = {}
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", "memo")
        MEMOS.append(self)

    def __call__(self, graph: Graph, *args: Any) -> R:
        key = (id(graph), *args, *map(type, args))  # 1 and 1.0 are equal keys, not results
        held = self.held.get(key)
        if held is None or held[0] is not graph:
            if len(self.held) >= self.size:
                self.held.clear()
            held = self.held[key] = (graph, self.fn(graph, *args))
        return held[1]

    def clear(self) -> None:
        self.held.clear()


def clear_all() -> None:
    """Forget every memo's results (tests compare memoized and fresh computations)."""
    for memo in MEMOS:
        memo.clear()


def per_graph(size: int = 64) -> Callable[[Callable[..., R]], GraphMemo[R]]:
    """Decorator: memoize a pure function whose first argument is a `Graph` (`GraphMemo`)."""
    def wrap(fn: Callable[..., R]) -> GraphMemo[R]:
        return GraphMemo(fn, size)

    return wrap
