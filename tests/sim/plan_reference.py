"""The plan search's reference: every plan the plan vocabulary writes for a small case, built
here from the vocabulary and the search's docstring, without the search's own space."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

from dojo.errors import ConfigError
from dojo.plan import parse_plan
from dojo.plan.plan import Plan, chunk_blocks, validate_plan
from dojo.sim import session
from dojo.sim.session import model_shape


def in_family(split: tuple[int, ...], layers: int) -> bool:
    """The search's uneven splits as its docstring states them, checked on a split: first and
    last within c - 2 .. c (c = ceil(blocks / virtual stages)), the middle ones at least 1,
    differing by at most one and never decreasing; with two stages the first within c - 2 ..
    c + 2."""
    v = len(split)
    c = math.ceil(layers / v)
    if v == 1:
        return True
    if v == 2:
        return c - 2 <= split[0] <= c + 2
    middle = split[1:-1]
    return (all(c - 2 <= n <= c for n in (split[0], split[-1])) and min(middle) >= 1
            and max(middle) - min(middle) <= 1 and list(middle) == sorted(middle))


def compositions(total: int, parts: int) -> list[tuple[int, ...]]:
    """Every way to write `total` blocks as `parts` counts >= 0, in order."""
    return [tuple(b - a - 1 for a, b in zip((-1, *cuts), (*cuts, total + parts - 1)))
            for cuts in itertools.combinations(range(total + parts - 1), parts - 1)]


def every_plan(model: Mapping[str, Any], devices: int, batch: int,
               name: str = "gpt") -> list[Plan]:
    """Every plan text the vocabulary writes for `model` on up to `devices` devices (the
    rest idle), with every split of the search's family given as `stages=` and every
    micro-batch group `vp_group` up to pp where pp divides the micro-batches (the search's
    docstring: the others are not searched), dominated settings included; those
    `validate_plan` accepts."""
    shape = model_shape(*session.captured(name, dict(model), 1, None))
    layers = shape.layers
    out = set()
    for dp, tp, pp in itertools.product(range(1, devices + 1), repeat=3):
        if dp * tp * pp > devices:
            continue
        for mb, inter in itertools.product(range(1, batch + 1), range(1, layers + 3)):
            splits = [s for s in compositions(layers, pp * inter) if in_family(s, layers)]
            for split, sched, rec, zero, sp, overlap, group in itertools.product(
                    splits, ("1f1b", "gpipe", "interleaved"), ("none", "selective", "full"),
                    (0, 1, 2, 3), ("off", "on"), ("on", "off"), range(pp + 1)):
                if group and (inter == 1 or batch // (dp * mb) % pp):
                    continue   # refused by `check_plan`; not searched (`search`'s docstring)
                text = (f"dp={dp},tp={tp},pp={pp},mb={mb},interleave={inter},schedule={sched},"
                        f"recompute={rec},zero={zero},sp={sp},overlap={overlap}")
                if group:
                    text += f",vp_group={group}"
                if list(split) != chunk_blocks(layers, pp * inter):   # the default: unwritten
                    text += f",stages={':'.join(map(str, split))}"
                try:
                    plan = parse_plan(text)
                    validate_plan(plan, shape, devices, batch)
                except ConfigError:
                    continue
                out.add(plan)
    return sorted(out, key=lambda p: p.text())
