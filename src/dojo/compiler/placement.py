"""Which device counts a plan may occupy on a system, as its compiler would place them.

GPU clusters: any dp x tp x pp up to the system's GPUs (the rest stay idle).

Dojo: a plan is placed the way the Dojo compiler maps work onto the mesh, on whole training
tiles (25 D1 chips in a 5 x 5 grid; tiles on a 2D mesh: 6 in a V1 matrix, 120 in an ExaPOD):
- a tensor-parallel group is a rectangle of chips inside one tile (a x b chips with a, b at most
  the grid's sides: 1-6, 8-10, 12, 15, 16, 20 or 25 chips on a 5 x 5 tile), or whole tiles, so
  that its traffic, the most frequent, stays on die-to-die links;
- the plan occupies whole tiles (dp x tp x pp a multiple of 25) or, within one tile, a
  rectangle of chips; the rest of the machine idles.
The collectives are then priced as for any plan (`compiler.mapping`: by the levels a group
spans, its members counted as packed in rank order). `placed` says whether a plan meets these
rules, and `placement_error` why not.
"""

from __future__ import annotations

from dojo.hardware.spec import SystemSpec
from dojo.plan.plan import Plan


def tile_grid(spec: SystemSpec) -> tuple[int, int] | None:
    """(rows, columns) of chips in one Dojo tile; None for GPU clusters and lone chips."""
    if spec.family != "dojo" or len(spec.levels) < 2:
        return None
    grid = spec.levels[1].spec.grid
    if grid is None:
        return (1, spec.levels[1].spec.count)
    return (grid[0], grid[1])


def _rectangle(n: int, rows: int, cols: int) -> bool:
    """Whether `n` chips form an a x b rectangle in a rows x cols grid."""
    return any(n % a == 0 and n // a <= cols for a in range(1, rows + 1))


def tp_placed(spec: SystemSpec, tp: int) -> bool:
    """Whether a tensor-parallel group of `tp` devices can be placed (module docstring)."""
    grid = tile_grid(spec)
    if grid is None:
        return True
    per_tile = grid[0] * grid[1]
    return tp % per_tile == 0 or _rectangle(tp, *grid)


def devices_placed(spec: SystemSpec, devices: int) -> bool:
    """Whether a plan of `devices` devices occupies whole tiles or one rectangle of chips."""
    grid = tile_grid(spec)
    if grid is None:
        return True
    per_tile = grid[0] * grid[1]
    return devices % per_tile == 0 or (devices < per_tile and _rectangle(devices, *grid))


def placement_error(spec: SystemSpec, plan: Plan) -> str | None:
    """Why `plan` cannot be placed on `spec` as its compiler would (None when it can)."""
    grid = tile_grid(spec)
    if grid is None:
        return None
    per_tile = grid[0] * grid[1]
    shape = f"{grid[0]} x {grid[1]}"
    if not tp_placed(spec, plan.tp):
        return (f"tp {plan.tp} is neither a rectangle of chips in a {shape} tile nor whole "
                f"tiles (multiples of {per_tile} chips)")
    if not devices_placed(spec, plan.devices):
        return (f"dp x tp x pp = {plan.devices} chips is neither whole tiles (a multiple of "
                f"{per_tile}) nor a rectangle of a {shape} tile")
    return None


def placement_words(spec: SystemSpec) -> str:
    """The placement rule in words, for errors ('' on GPU clusters)."""
    grid = tile_grid(spec)
    if grid is None:
        return ""
    return (f" on whole {grid[0]} x {grid[1]} tiles (or one rectangle of chips) with tp a "
            "rectangle of chips in a tile")


def placed(spec: SystemSpec, plan: Plan) -> bool:
    return placement_error(spec, plan) is None
