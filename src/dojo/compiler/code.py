"""Which dispatched ops of an eager step find their code cold (a CPU running dojo's eager
runtime; `Calibration.cold_call_s` and `DeviceModel.code_cold` price it).

An eager op's dispatch runs code of its own: the Python line that issues it and its argument
parsing, the ATen kernel and its specialisation, autograd's node. A core keeps the code it ran
last in its instruction caches; a call site that ran a moment ago is hot, one that has not run
since the step's other code went through them is cold (bench/phase_dispatch.py and
docs/benchmarks.md, sixteenth round: occupancy's camera-to-BEV lift takes 144 us run alone and
179 us after 23 unrelated tiny ops, whose data is a few hundred bytes).

A call site is keyed (`op_key`) by its ATen target and, in the forward, by the class of the
module it runs in (the capture records each module path's, `code_sites`: every RMSNorm of a
model, every instance of a repeated block, runs the same code), or without it by the module's
path with repeated modules' indices dropped (`blocks.3.attn.qkv` -> `blocks.*.attn.qkv`); a
forward op outside any module (a model's own functional code, its loss) is a site of its own.
A backward op's code is its kernel and autograd node, keyed by its target. In one
micro-batch's pass the first op of each key is cold and the rest hot: a block's first instance
pays, its repeats do not (`Chunk.forward` repeats the template's costs with `hot`). Whether
the first ones pay depends on how much code the step runs between two passes, its distinct
keys views included (`section_keys`, `dojo.sim.eager.code_keys`): a step whose code stays in
the caches runs hot throughout (`dojo.sim.eager.code_in_cache`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from dojo.capture.params import CODE_KEY, site_path
from dojo.compiler.eager_cpu import INNER_VIEWS
from dojo.graph import Graph, Op


def code_sites(graph: Graph) -> dict[str, str]:
    """Module site path -> its class, from the capture's `CODE_KEY` meta ({} without it)."""
    text = dict(graph.meta).get(CODE_KEY, "")
    return dict(item.split("=", 1) for item in text.split(";") if "=" in item)


def op_key(op: Op, ordinal: int, classes: Mapping[str, str] | None = None) -> str:
    """The call site of dispatched op `op`; `ordinal` numbers a forward op outside any module
    among its phase's dispatched ops (each is a line of its own). A module's site is its
    class where `classes` (`code_sites`) knows it: every RMSNorm of a model runs one code."""
    if op.phase != "forward":
        return op.target
    if op.layer is None:
        return f"{op.target}@#{ordinal}"
    site = site_path(op.layer)
    return f"{op.target}@{(classes or {}).get(site, site)}"


def cold_marks(grouped: list[tuple[list[Op], str]], classes: Mapping[str, str] | None = None
               ) -> tuple[tuple[int, int], ...]:
    """Per kernel group (`fusion.groups`, graph order): (non-elementwise ops, elementwise
    ops) of it whose key (`op_key` with `classes`) is the first of its phase: the cold calls
    of a pass."""
    seen: set[str] = set()
    out = []
    ordinal = 0
    for group, _ in grouped:
        other = pointwise = 0
        for op in group:
            if op.target in INNER_VIEWS:
                continue
            ordinal += 1
            key = f"{op.phase}:{op_key(op, ordinal, classes)}"
            if key in seen:
                continue
            seen.add(key)
            if op.rule == "pointwise":
                pointwise += 1
            else:
                other += 1
        out.append((other, pointwise))
    return tuple(out)


def section_keys(ops: Sequence[Op], labels: Sequence[str],
                 classes: Mapping[str, str] | None = None) -> dict[str, frozenset[str]]:
    """Per section label (`labels`, one per op): the keys (`op_key` with `classes`, and their
    phase) of its forward and backward ops, views included (a view's Python call and its
    autograd node run code too, if little): the code it runs."""
    out: dict[str, set[str]] = {}
    ordinal = 0
    for op, label in zip(ops, labels):
        if op.phase == "optimizer" or op.target in INNER_VIEWS:
            continue
        ordinal += 1
        out.setdefault(label, set()).add(f"{op.phase}:{op_key(op, ordinal, classes)}")
    return {label: frozenset(keys) for label, keys in out.items()}


def hot(cost: Any) -> Any:
    """`cost` (an `OpCost`) as a repeat of its call sites finds them: no cold calls."""
    if not (cost.cold_calls or cost.cold_pointwise):
        return cost
    return replace(cost, cold_calls=0, cold_pointwise=0)


def instances(costs: tuple[Any, ...], n: int) -> list[Any]:
    """`n` instances of a section's op costs in a row: the first as they are, the rest `hot`."""
    if n <= 0:
        return []
    return list(costs) + [hot(c) for c in costs] * (n - 1)
