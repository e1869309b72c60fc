"""Job specs: admission checks (one line per bad field) and the partition a job is simulated on.

A spec is JSON: `{"kind": "simulate"|"plan"|"train", "model": "gpt", "tiles": 2, ...}`. Every
field is checked here, in the server process, without importing torch or running tenant code: a
model given as `file.py:factory` is refused unless the server allows factories, and even then it
is only ever loaded in a worker subprocess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from dojo.errors import DojoError
from dojo.service.mesh import Machine, Rect, shapes
from dojo.service.multihost import check_spec

KINDS = ("simulate", "plan", "train", "occupancy")
MAX_LIMIT_S = 7 * 24 * 3600.0
MAX_STEPS = 100_000
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_FACTORY = re.compile(r"^[\w./-]{1,200}\.py:[A-Za-z_]\w{0,63}$")
_KEYS = {"kind", "model", "tiles", "plan", "batch", "seq", "set", "steps", "seed",
         "limit_s", "priority", "min_step_s", "checkpoint_every", "clips", "dataset",
         "hosts", "ranks"}


@dataclass(frozen=True)
class Admitted:
    """A checked spec and the scheduler's view of it."""

    kind: str
    spec: dict[str, Any]
    tiles: int
    limit_s: float
    priority: int


class Invalid(DojoError):
    """Bad spec: `lines` has one message per bad field."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("; ".join(lines))


def admit(body: Any, machine: Machine, *, allow_factories: bool = False,
          may_prioritise: bool = False) -> Admitted:
    """Check a submitted spec against the machine and the server's rules; `Invalid` lists every
    bad field as "field = value: expected ..."."""
    if not isinstance(body, dict):
        raise Invalid([f"body = {_short(body)}: expected a JSON object"])
    bad: list[str] = [f"{k}: unknown field (known: {', '.join(sorted(_KEYS))})"
                      for k in sorted(set(body) - _KEYS)]

    def field(name: str, ok: bool, expected: str) -> None:
        if not ok:
            bad.append(f"{name} = {_short(body.get(name))}: expected {expected}")

    kind = body.get("kind")
    field("kind", kind in KINDS, " or ".join(KINDS))
    if kind == "occupancy":
        body = {"model": "occupancy", **body}
        field("model", body["model"] == "occupancy", "occupancy (or no model) for this kind")
    model = body.get("model")
    is_factory = isinstance(model, str) and ":" in model
    field("model", isinstance(model, str) and bool(_NAME.match(model) or _FACTORY.match(model)),
          "a zoo model name (e.g. gpt, mlp) or path/file.py:factory")
    if is_factory and not allow_factories:
        bad.append(f"model = {_short(model)}: model factories are refused by this server "
                   "(start it with --allow-factories to run them in sandboxed workers)")
    # occupancy: the large preset is simulated on the partition, and a lone tile has no DIPs
    tiles = body.get("tiles", 2 if kind == "occupancy" else 1)
    if kind == "occupancy" and tiles == 1:
        bad.append("tiles = 1: expected 2 or more for occupancy (the large preset is simulated "
                   "on the job's tiles, and a lone tile has no DIP memory to hold it)")
    field("tiles", tiles == "auto" or (_int(tiles) and 1 <= tiles <= machine.tiles
                                       and bool(shapes(tiles, machine.rows, machine.cols))),
          f"auto or a whole number of tiles from 1 to {machine.tiles} that fits a rectangle "
          f"of the {machine.rows} x {machine.cols} mesh")
    if tiles == "auto" and "batch" not in body:
        bad.append("tiles = 'auto': expected a batch too (the planner sizes the partition "
                   "for a global batch)")
    limit = body.get("limit_s", 600)
    field("limit_s", _num(limit) and 1 <= limit <= MAX_LIMIT_S,
          f"a wall-time limit in seconds from 1 to {MAX_LIMIT_S:g}")
    prio = body.get("priority", 0)
    field("priority", _int(prio) and 0 <= prio <= 1, "0 (normal) or 1 (urgent)")
    if _int(prio) and prio > 0 and not may_prioritise:
        bad.append(f"priority = {prio}: expected 0 (urgent jobs need an admin token)")
    plan = body.get("plan", "auto")
    field("plan", isinstance(plan, str) and len(plan) <= 200 and _plan_ok(plan),
          "auto or a plan like dp=25,tp=1 (dojo simulate --help)")
    for name, hi in (("batch", 2**31), ("seq", 2**31), ("steps", MAX_STEPS), ("seed", 2**31),
                     ("checkpoint_every", MAX_STEPS), ("clips", 256)):
        if name in body:
            v = body[name]
            field(name, _int(v) and (0 if name == "seed" else 1) <= v <= hi,
                  f"a whole number up to {hi}")
    if "dataset" in body:
        field("dataset", kind == "occupancy" and isinstance(body["dataset"], str)
              and bool(_NAME.match(body["dataset"])) and "." not in body["dataset"],
              "the name of an uploaded dataset (occupancy jobs only)")
    if "min_step_s" in body:
        field("min_step_s", _num(body["min_step_s"]) and 0 <= body["min_step_s"] <= 60,
              "seconds from 0 to 60")
    bad += check_spec(body, kind)  # hosts, ranks: a train job that spans worker hosts
    sets = body.get("set", {})
    field("set", isinstance(sets, dict) and len(sets) <= 32
          and all(isinstance(k, str) and isinstance(v, str | int | float | bool)
                  for k, v in sets.items()), "an object of model settings (at most 32)")
    if bad:
        raise Invalid(bad)
    spec = {k: v for k, v in body.items() if k not in ("tiles", "limit_s", "priority")}
    spec.setdefault("plan", "auto")
    if kind in ("train", "occupancy"):
        spec.setdefault("steps", 20)
    # tiles 0: "auto", sized by the planner in a worker before the job is queued for tiles.
    return Admitted(str(kind), spec, 0 if tiles == "auto" else int(tiles), float(limit),
                    int(prio))


def _plan_ok(text: str) -> bool:
    if text == "auto":
        return True
    from dojo.plan import parse_plan

    try:
        parse_plan(text)
    except DojoError:
        return False
    return True


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def partition_system(base: Any, rect: Rect) -> Any:
    """The `SystemSpec` of a job's tiles: the base system's tile, `rect.rows` x `rect.cols` of
    them on one mesh level, with DIPs on the partition's west and east edges as a V1 tray has
    them (5 per tile edge). One tile is the plain tile."""
    from dojo.hardware import load_system
    from dojo.hardware.spec import DipPlacement, Level

    if rect.size == 1:
        return load_system("tile")
    tray = load_system("tray")
    if tray.dip is None or tray.host is None:
        raise DojoError("tray.toml: a Dojo tray has DIPs and hosts")
    level = tray.levels[-1]
    grid = Level(name=level.name, spec=replace(level.spec, count=rect.size,
                                               grid=(rect.rows, rect.cols)))
    edges = tuple([(r, 0, "west") for r in range(rect.rows)]
                  + [(r, rect.cols - 1, "east") for r in range(rect.rows)])
    dip = replace(tray.dip, count=None, placement=DipPlacement(level=level.name, edges=edges))
    host = replace(tray.host, count=None)
    name = f"{base.name}-{rect.rows}x{rect.cols}"
    return replace(tray, name=name, title=f"{rect.size} tiles of {base.title}",
                   levels=(*tray.levels[:-1], grid), dip=dip, host=host)
