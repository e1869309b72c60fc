"""Collective algorithms on the levels a group spans (see dojo.compiler.mapping.GroupLevel).

Each algorithm returns seconds for one collective of `nbytes` (the full buffer each member holds)
over `levels` (inside out). The cost model takes the fastest applicable one, as NCCL's tuner does:
- ring: one flat ring over all members at the slowest level's per-member bandwidth;
- tree: double binary tree, log-depth latency, twice the buffer over the slowest bandwidth;
- hierarchical: reduce-scatter inside each level going out, all-gather coming back in, so outer
  (slower) levels carry only 1/inner of the data;
- mesh2d: on a 2D mesh level, rings along rows then columns of the most square rectangle;
- pairwise (all-to-all): each member sends every other member its 1/n share at once, so each
  level carries the shares of the members that first meet there, over that level's bandwidth,
  all levels at the same time (NVLink inside a server while InfiniBand carries the rest).
Formulas use a per-step latency a and per-member bandwidth b (times the link efficiency).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from dojo.compiler.mapping import GroupLevel
from dojo.registry import Registry

KINDS = ("all_reduce", "reduce_scatter", "all_gather", "all_to_all", "send_recv")
Algorithm = Callable[[str, float, Sequence[GroupLevel], float, float], float | None]
ALGORITHMS: Registry[Algorithm] = Registry("collective algorithm")


def _passes(kind: str) -> int:
    """Ring passes over the data: all-reduce is a reduce-scatter plus an all-gather."""
    return 2 if kind == "all_reduce" else 1


@ALGORITHMS.register("ring")
def ring(kind: str, nbytes: float, levels: Sequence[GroupLevel], eff: float,
         alpha: float) -> float | None:
    n = math.prod(lv.members for lv in levels)
    bw = min(lv.bytes_per_s for lv in levels) * eff
    lat = max(lv.latency_s for lv in levels) + alpha
    if kind == "send_recv":
        return lat + nbytes / bw
    return _passes(kind) * (n - 1) * (lat + nbytes / (n * bw))


@ALGORITHMS.register("tree")
def tree(kind: str, nbytes: float, levels: Sequence[GroupLevel], eff: float,
         alpha: float) -> float | None:
    if kind != "all_reduce":
        return None
    n = math.prod(lv.members for lv in levels)
    bw = min(lv.bytes_per_s for lv in levels) * eff
    lat = max(lv.latency_s for lv in levels) + alpha
    return 2 * math.ceil(math.log2(n)) * lat + 2 * nbytes / bw


@ALGORITHMS.register("hierarchical")
def hierarchical(kind: str, nbytes: float, levels: Sequence[GroupLevel], eff: float,
                 alpha: float) -> float | None:
    if kind not in ("all_reduce", "reduce_scatter", "all_gather") or len(levels) < 2:
        return None
    total, share = 0.0, nbytes
    for lv in levels:
        n = lv.members
        total += (n - 1) * (lv.latency_s + alpha + share / (n * lv.bytes_per_s * eff))
        share /= n
    return _passes(kind) * total


@ALGORITHMS.register("mesh2d")
def mesh2d(kind: str, nbytes: float, levels: Sequence[GroupLevel], eff: float,
           alpha: float) -> float | None:
    if kind not in ("all_reduce", "reduce_scatter", "all_gather"):
        return None
    if not all(lv.topology == "mesh2d" for lv in levels):
        return None
    total, share = 0.0, nbytes
    for lv in levels:
        rows, cols = _rectangle(lv.members)
        for n in (cols, rows):
            if n > 1:
                total += (n - 1) * (lv.latency_s + alpha + share / (n * lv.bytes_per_s * eff))
                share /= n
    return _passes(kind) * total


@ALGORITHMS.register("pairwise")
def pairwise(kind: str, nbytes: float, levels: Sequence[GroupLevel], eff: float,
             alpha: float) -> float | None:
    """All-to-all: at level i (m_i members, c_i = m_1 ... m_i members below one unit) a
    member sends nbytes (c_i - c_(i-1)) / n in (m_i - 1) latency steps; levels run at once."""
    if kind != "all_to_all":
        return None
    n = math.prod(lv.members for lv in levels)
    worst, below = 0.0, 1
    for lv in levels:
        inside = below * lv.members
        share = nbytes * (inside - below) / n
        worst = max(worst, (lv.members - 1) * (lv.latency_s + alpha)
                    + share / (lv.bytes_per_s * eff))
        below = inside
    return worst


def _rectangle(n: int) -> tuple[int, int]:
    rows = int(math.isqrt(n))
    while n % rows:
        rows -= 1
    return rows, n // rows


def collective_time(kind: str, nbytes: float, levels: Sequence[GroupLevel], eff: float,
                    alpha: float) -> tuple[float, str]:
    """(seconds, algorithm) of the fastest algorithm; (0, "none") for a group of one."""
    if not levels or nbytes <= 0:
        return 0.0, "none"
    best = (math.inf, "none")
    for name in ALGORITHMS:
        t = ALGORITHMS.get(name)(kind, nbytes, levels, eff, alpha)
        if t is not None and t < best[0]:
            best = (t, name)
    return best
