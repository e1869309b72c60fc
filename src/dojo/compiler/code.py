"""Which dispatched ops of an eager step find their code cold (a CPU running dojo's eager
runtime; `Calibration.cold_call_s` and `DeviceModel.code_cold` price it).

An eager op's dispatch runs code of its own: the Python line that issues it and its argument
parsing, the ATen kernel and its specialisation, autograd's node. A core keeps the code it ran
last in its instruction caches; a call site that ran a moment ago is hot, one that has not run
since the step's other code went through them is cold (bench/phase_dispatch.py and
docs/benchmarks.md, sixteenth round: occupancy's camera-to-BEV lift takes 144 us run alone and
179 us after 23 unrelated tiny ops, whose data is a few hundred bytes).

A call site is keyed (`op_key`) by its ATen target and, in the forward, by the module it runs
in with the indices of repeated modules dropped (`blocks.3.attn.qkv` -> `blocks.*.attn.qkv`:
every instance of a repeated block runs the same code); a forward op outside any module (a
model's own functional code, its loss) is a site of its own. A backward op's code is its
kernel and autograd node, keyed by its target. In one micro-batch's pass the first op of each
key is cold and the rest hot: a block's first instance pays, its repeats do not
(`Chunk.forward` repeats the template's costs with `hot`). Whether the first ones pay depends
on how much code the step runs between two passes, its distinct keys (`code_keys`): a step
whose code stays in the caches runs hot throughout (`dojo.sim.eager.code_in_cache`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dojo.compiler.eager_cpu import INNER_VIEWS
from dojo.graph import Op


def op_key(op: Op, ordinal: int) -> str:
    """The call site of dispatched op `op`; `ordinal` numbers a forward op outside any module
    among its phase's dispatched ops (each is a line of its own)."""
    if op.phase != "forward":
        return op.target
    if op.layer is None:
        return f"{op.target}@#{ordinal}"
    site = ".".join("*" if part.isdigit() else part for part in op.layer.split("."))
    return f"{op.target}@{site}"


def cold_marks(grouped: list[tuple[list[Op], str]]) -> tuple[tuple[int, int], ...]:
    """Per kernel group (`fusion.groups`, graph order): (non-elementwise ops, elementwise
    ops) of it whose key is the first of its phase: the cold calls of a pass."""
    seen: set[str] = set()
    out = []
    ordinal = 0
    for group, _ in grouped:
        other = pointwise = 0
        for op in group:
            if op.target in INNER_VIEWS:
                continue
            ordinal += 1
            key = f"{op.phase}:{op_key(op, ordinal)}"
            if key in seen:
                continue
            seen.add(key)
            if op.rule == "pointwise":
                pointwise += 1
            else:
                other += 1
        out.append((other, pointwise))
    return tuple(out)


def section_keys(grouped: list[tuple[list[Op], str]]) -> dict[str, frozenset[str]]:
    """Per section label: the keys (`op_key`, with their phase) of its dispatched ops, forward
    and backward: the code it runs."""
    out: dict[str, set[str]] = {}
    ordinal = 0
    for group, label in grouped:
        for op in group:
            if op.target in INNER_VIEWS:
                continue
            ordinal += 1
            out.setdefault(label, set()).add(f"{op.phase}:{op_key(op, ordinal)}")
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
