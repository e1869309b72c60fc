"""Where a group of devices sits in the hierarchy, and what bandwidth each member gets there.

Devices are the units the plan places work on: GPUs on a GPU cluster, D1 chips on Dojo (the
chip-level model; node-level mapping is the Dojo compiler's). Ranks are numbered with tensor
parallelism innermost, then data parallelism, then pipeline stages (Megatron-LM's order), so a
group is (size, stride) over consecutive device indices. `group_levels` says, level by level from
the inside out, how many members of the group meet there and what bandwidth each member gets.
"""

from __future__ import annotations

from dataclasses import dataclass

from dojo.hardware.loader import units_of
from dojo.hardware.spec import Level, SystemSpec


@dataclass(frozen=True)
class GroupLevel:
    """`members` group members meet at `level`; each sends at `bytes_per_s` with `latency_s`."""

    level: str
    link: str
    members: int
    bytes_per_s: float
    latency_s: float
    topology: str


def device_level(spec: SystemSpec) -> int:
    """Index into `spec.levels` of the first level above the devices (-1 = devices are leaves)."""
    return 0 if spec.family == "dojo" else -1


def device_name(spec: SystemSpec) -> str:
    return spec.levels[0].name if spec.family == "dojo" else spec.leaf_name


def device_count(spec: SystemSpec) -> int:
    return units_of(spec, device_name(spec))


def leaves_per_device(spec: SystemSpec) -> int:
    return spec.levels[0].spec.count if spec.family == "dojo" else 1


def _levels_above_devices(spec: SystemSpec) -> list[Level]:
    return list(spec.levels[device_level(spec) + 1:])


def _devices_per_unit(spec: SystemSpec) -> list[int]:
    """Devices in one unit of each level above the devices, inside out."""
    out, n = [], 1
    for lv in _levels_above_devices(spec):
        n *= lv.spec.count
        out.append(n)
    return out


def group_levels(spec: SystemSpec, size: int, stride: int) -> tuple[GroupLevel, ...]:
    """The levels a group of `size` devices with rank `stride` spans, inside out.

    A member's bandwidth at a level is that level's link shared by all devices of one child unit
    (they all run the same collective at once under a symmetric plan): a mesh or fat-tree link
    divided by devices per child; a switch gives each child its own link.
    """
    if size <= 1:
        return ()
    out = []
    levels = _levels_above_devices(spec)
    per_unit = _devices_per_unit(spec)
    previous = 1  # group members inside one unit of the level below
    for i, lv in enumerate(levels):
        inside = min(size, max(1, per_unit[i] // stride))
        members = inside // previous
        if members > 1:
            out.append(_group_level(lv, per_unit[i - 1] if i else 1, members))
        previous = inside
        if inside >= size:
            break
    return tuple(out)


def _group_level(lv: Level, child_devices: int, members: int) -> GroupLevel:
    """`members` of a group meeting at level `lv`, whose child units hold `child_devices`."""
    share = 1 if lv.spec.topology == "switch" else child_devices
    hops = 1 if lv.spec.topology == "mesh2d" else 2
    return GroupLevel(lv.name, lv.spec.link.name, members,
                      lv.spec.link.bytes_per_s * lv.spec.link.ports / share,
                      lv.spec.link.latency_s * hops, lv.spec.topology)


def pair_levels(spec: SystemSpec, devices: int) -> tuple[GroupLevel, ...]:
    """The level where the first and the last pipeline stage of each (dp, cp, tp) rank meet
    (Megatron's embedding group) in a plan of `devices` ranks: ranks run tp innermost, then cp,
    dp and pp, so the first stage is ranks [0, w) and the last [devices - w, devices), and
    all pairs (r, r + devices - w), running at once, meet at the first level whose unit holds
    every rank; () on one device."""
    if devices <= 1:
        return ()
    levels, per_unit = _levels_above_devices(spec), _devices_per_unit(spec)
    for i, lv in enumerate(levels):
        if per_unit[i] >= devices or i == len(levels) - 1:
            return (_group_level(lv, per_unit[i - 1] if i else 1, 2),)
    return ()


def zplane_levels(spec: SystemSpec, levels: tuple[GroupLevel, ...]) -> tuple[GroupLevel, ...]:
    """The Z-plane alternative for a Dojo group that leaves its tile: keep the in-tile level, then
    replace every level above it by one ring of tiles through their DIPs over TTPoE. The DIPs of
    a tile (those at its edges, averaged over the system) are shared by every device of the tile.
    Empty when the system has no DIPs or the group stays inside a tile."""
    from dojo.hardware.loader import dip_count

    if spec.family != "dojo" or spec.dip is None or len(spec.levels) < 2:
        return ()
    tile_name = spec.levels[1].name
    inner = tuple(g for g in levels if g.level == tile_name)
    outer = [g for g in levels if g.level != tile_name]
    if not outer:
        return ()
    tiles = 1
    for g in outer:
        tiles *= g.members
    per_tile = spec.levels[1].spec.count
    eth = spec.dip.ethernet
    bw = dip_count(spec) / units_of(spec, tile_name) * eth.bytes_per_s * eth.ports / per_tile
    latency = 2 * eth.latency_s + spec.dip.switch_latency_s + 2 * spec.dip.ttp.latency_s
    return (*inner, GroupLevel("zplane", eth.name, tiles, bw, latency, "switch"))
