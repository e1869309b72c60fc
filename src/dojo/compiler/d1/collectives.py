"""Dojo collectives: rings on the 2D mesh of chips (no wraparound), across tiles, over the Z-plane.

A ring on a line of p members without wraparound is folded (0 -> 2 -> 4 ... -> 3 -> 1 -> 0): every
link carries one flow each way, so a member sends at the full link bandwidth per direction, and a
step spans at most 2 hops. Over p members with a buffer of N bytes, bandwidth b and step latency
a, a reduce-scatter or all-gather takes (p - 1) (a + N / (p b)); an all-reduce twice that.
On a rectangle r x c: rings along rows on N bytes, then along columns on N / c (and back).
Across tiles the collective is hierarchical: reduce-scatter inside each tile, rings of the
matching chips of every tile over the tile edges (each chip gets its lane share of an edge), then
all-gather inside. The Z-plane replaces the middle step with a ring of tiles through their DIPs'
TTPoE links and the Ethernet switch. `best_collective` takes the fastest that applies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dojo.compiler.d1.stream import chip_path, stream_share
from dojo.errors import DojoError
from dojo.hardware.loader import dip_count, units_of
from dojo.hardware.spec import LevelSpec, SystemSpec
from dojo.hardware.topology import Topology

KINDS = ("all_reduce", "reduce_scatter", "all_gather")


@dataclass(frozen=True)
class Phase:
    """One ring stage: `members` on `level`, buffer `nbytes` per member, its seconds."""

    level: str
    members: int
    nbytes: float
    bytes_per_s: float
    step_latency_s: float
    time_s: float


@dataclass(frozen=True)
class CollectiveTime:
    """A collective of `nbytes` per member (the full buffer), `via` mesh or zplane."""

    kind: str
    nbytes: float
    via: str
    phases: tuple[Phase, ...]

    @property
    def time_s(self) -> float:
        return sum(p.time_s for p in self.phases)


def ring_time(kind: str, nbytes: float, members: int, bytes_per_s: float,
              step_latency_s: float) -> float:
    """Closed form of a ring collective (see the module docstring); 0 for one member."""
    if kind not in KINDS:
        raise DojoError(f"collective '{kind}': expected one of {', '.join(KINDS)}")
    if members <= 1:
        return 0.0
    passes = 2 if kind == "all_reduce" else 1
    return passes * (members - 1) * (step_latency_s + nbytes / (members * bytes_per_s))


def _phase(level: str, kind: str, nbytes: float, members: int, bw: float,
           hop_s: float) -> Phase:
    step = min(2, max(members - 1, 0)) * hop_s
    return Phase(level, members, nbytes, bw, step, ring_time(kind, nbytes, members, bw, step))


def mesh_collective(kind: str, nbytes: float, rect: tuple[int, int], bytes_per_s: float,
                    hop_latency_s: float, level: str = "mesh") -> tuple[Phase, ...]:
    """Rings along the rows (c members, N bytes) then the columns (r members, N / c bytes)."""
    r, c = rect
    return (_phase(f"{level}-rows", kind, nbytes, c, bytes_per_s, hop_latency_s),
            _phase(f"{level}-cols", kind, nbytes / c, r, bytes_per_s, hop_latency_s))


def tile_collective(kind: str, nbytes: float, spec: SystemSpec,
                    rect: tuple[int, int] | None = None) -> CollectiveTime:
    """A collective over a rectangle of chips inside one tile (default: the whole tile)."""
    tile = _level(spec, 1, "tile collective")
    rows, cols = tile.grid or (1, tile.count)
    r, c = rect or (rows, cols)
    if not (1 <= r <= rows and 1 <= c <= cols):
        raise DojoError(f"chip rectangle {r} x {c}: expected at most the {rows} x {cols} tile")
    link = tile.link
    return CollectiveTime(kind, nbytes, "mesh", mesh_collective(
        kind, nbytes, (r, c), link.bytes_per_s * link.ports, link.latency_s,
        spec.levels[1].name))


def _level(spec: SystemSpec, index: int, what: str) -> LevelSpec:
    if spec.family != "dojo" or len(spec.levels) <= index:
        raise DojoError(f"{what}: {spec.name} has no level {index + 1} above its nodes")
    return spec.levels[index].spec


def cross_tile_collective(kind: str, nbytes: float, spec: SystemSpec,
                          tiles: tuple[int, int]) -> CollectiveTime:
    """Hierarchical over a `tiles` rectangle of whole tiles joined by tile edges (one tray)."""
    tray = _level(spec, 2, "cross-tile collective")
    rows, cols = tray.grid or (1, tray.count)
    tr, tc = tiles
    if not (1 <= tr <= rows and 1 <= tc <= cols):
        raise DojoError(f"tile rectangle {tr} x {tc}: expected at most the {rows} x {cols} "
                        f"tiles of a {spec.levels[2].name}")
    per_tile = spec.levels[1].spec.count
    inner = tile_collective(kind, nbytes, spec).phases
    topo = Topology(spec)
    shard = nbytes / per_tile
    out = []
    for members, other, name in ((tc, per_tile, "cols"), (tr, per_tile * cols, "rows")):
        if members <= 1:
            continue
        route = topo.route(chip_path(spec, 0), chip_path(spec, other), via="mesh")
        size = shard if name == "cols" else shard / tc
        out.append(_phase(f"tiles-{name}", kind, size, members, route.bottleneck_bytes_per_s,
                          route.latency_s))
    return CollectiveTime(kind, nbytes, "mesh", _hierarchy(kind, inner, tuple(out)))


def _hierarchy(kind: str, inner: tuple[Phase, ...], outer: tuple[Phase, ...]
               ) -> tuple[Phase, ...]:
    """Reduce-scatter in, the outer collective, all-gather back (per kind)."""
    if kind == "all_reduce":
        half = tuple(Phase(p.level, p.members, p.nbytes, p.bytes_per_s, p.step_latency_s,
                           p.time_s / 2) for p in inner)
        return half + outer + half
    return inner + outer if kind == "reduce_scatter" else outer + inner


def zplane_collective(kind: str, nbytes: float, spec: SystemSpec, tiles: int) -> CollectiveTime:
    """Hierarchical with the outer ring of `tiles` tiles through their DIPs over TTPoE."""
    dip = spec.dip
    total_tiles = units_of(spec, spec.levels[1].name) if len(spec.levels) > 1 else 0
    if dip is None or dip_count(spec) == 0:
        raise DojoError(f"{spec.name} has no DIPs, so no Z-plane")
    if not 1 <= tiles <= total_tiles:
        raise DojoError(f"tiles = {tiles}: expected 1..{total_tiles}")
    inner = tile_collective(kind, nbytes, spec).phases
    eth = dip.ethernet
    bw = dip_count(spec) / total_tiles * eth.bytes_per_s * eth.ports
    step = (2 * eth.latency_s + dip.switch_latency_s + 2 * dip.ttp.latency_s
            + 2 * stream_share(spec).latency_s)
    outer = Phase("zplane", tiles, nbytes, bw, step, ring_time(kind, nbytes, tiles, bw, step))
    return CollectiveTime(kind, nbytes, "zplane", _hierarchy(kind, inner, (outer,)))


def _square(count: int, rows: int, cols: int) -> tuple[int, int] | None:
    """The most square r x c == count inside rows x cols, if any."""
    fits = [(r, count // r) for r in range(1, rows + 1) if count % r == 0 and count // r <= cols]
    return min(fits, key=lambda rc: abs(rc[0] - rc[1])) if fits else None


def best_collective(kind: str, nbytes: float, spec: SystemSpec, chips: int) -> CollectiveTime:
    """The fastest way for `chips` chips (a tile's rectangle, or whole tiles) to run `kind`."""
    tile = _level(spec, 1, "collective")
    if chips <= tile.count:
        rect = _square(chips, *(tile.grid or (1, tile.count)))
        if rect is not None:
            return tile_collective(kind, nbytes, spec, rect)
        link = tile.link  # a folded ring along a snake through the tile
        return CollectiveTime(kind, nbytes, "mesh", (_phase(
            "tile-snake", kind, nbytes, chips, link.bytes_per_s * link.ports, link.latency_s),))
    tiles = math.ceil(chips / tile.count)
    options = []
    if len(spec.levels) > 2:
        tray = spec.levels[2].spec
        rect = _square(tiles, *(tray.grid or (1, tray.count)))
        if rect is not None:
            options.append(cross_tile_collective(kind, nbytes, spec, rect))
    if spec.dip is not None:
        options.append(zplane_collective(kind, nbytes, spec, tiles))
    if not options:
        raise DojoError(f"{chips} chips: {spec.name} offers no route for a collective over them")
    return min(options, key=lambda o: (o.time_s, o.via != "mesh"))


@dataclass(frozen=True)
class HostTransfer:
    """Host -> DIP (PCIe) -> tile (TTP) -> chips (mesh from the edge), pipelined. Seconds."""

    nbytes: float
    pcie_s: float
    ttp_s: float
    mesh_s: float
    latency_s: float

    @property
    def time_s(self) -> float:
        return max(self.pcie_s, self.ttp_s, self.mesh_s) + self.latency_s


def host_input_time(nbytes: float, spec: SystemSpec) -> HostTransfer:
    """Seconds to bring `nbytes` of input from the hosts into every chip's SRAM, spread evenly:
    each DIP carries its share over PCIe and TTP; inside, each chip's share crosses the mesh from
    its nearest DIP at that route's lane share."""
    dip = spec.dip
    if dip is None or dip_count(spec) == 0:
        raise DojoError(f"{spec.name} has no DIPs: no host input path")
    if nbytes < 0:
        raise DojoError(f"input bytes = {nbytes}: expected >= 0")
    dips = dip_count(spec)
    share = stream_share(spec)
    chips = units_of(spec, spec.levels[0].name)
    lane = min(s.route_bytes_per_s for s in share.streams)
    return HostTransfer(nbytes=nbytes,
                        pcie_s=nbytes / (dips * dip.pcie.bytes_per_s * dip.pcie.ports),
                        ttp_s=nbytes / (dips * dip.ttp.bytes_per_s * dip.ttp.ports),
                        mesh_s=nbytes / chips / lane,
                        latency_s=dip.pcie.latency_s + share.latency_s)
