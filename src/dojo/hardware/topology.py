"""The system as devices and links, hierarchically: no object per node, so an ExaPOD is cheap.

Endpoints are written top-down from the children of the top level, for example
``tile[0,1]/chip[2,3]/node[4,5]`` in `tray`, ``cabinet[3]/tray[1]/tile[1,2]`` in `exapod`,
``server[3]/gpu[5]`` in a GPU cluster, or an attachment ``dip[7]`` / ``host[2]``. A path may stop at
any level; it then stands for that whole unit, and routes are computed at that granularity.

Consecutive `mesh2d` levels (Dojo: nodes in a chip, chips in a tile, tiles in a tray...) form one
global 2D mesh. Routes use dimension-ordered (XY) routing in it; each hop crosses the boundary of
some level and takes that level's link. A flow one endpoint wide shares a boundary with the other
lanes along it, so its bandwidth across a level-L boundary is L's link divided by the number of
endpoint cells along that boundary (a node crossing a 5-chip tile edge gets 9 TB/s / 90 rows).
The Z-plane route goes to the nearest DIP, over TTPoE through the Ethernet switch, and back in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dojo.errors import DojoError
from dojo.hardware.loader import dip_count, host_count
from dojo.hardware.spec import LinkSpec, SystemSpec

_COMPONENT = re.compile(r"^([A-Za-z_][\w-]*)\[(\d+)(?:,(\d+))?\]$")


@dataclass(frozen=True)
class Segment:
    """`hops` consecutive hops over one link class, each at `bytes_per_s` and `latency_s`."""

    link: str
    level: str
    hops: int
    bytes_per_s: float
    latency_s: float


@dataclass(frozen=True)
class Route:
    """A path between two endpoints: its segments, and what they add up to."""

    src: str
    dst: str
    via: str
    segments: tuple[Segment, ...]

    @property
    def hops(self) -> int:
        return sum(s.hops for s in self.segments)

    @property
    def links(self) -> tuple[str, ...]:
        return tuple(s.link for s in self.segments)

    @property
    def bottleneck_bytes_per_s(self) -> float:
        """Bandwidth of the slowest link on the route (inf for an empty route)."""
        return min((s.bytes_per_s for s in self.segments), default=float("inf"))

    @property
    def latency_s(self) -> float:
        return sum(s.hops * s.latency_s for s in self.segments)

    def time_s(self, nbytes: float) -> float:
        """Seconds to move `nbytes` alone on this route: latency plus bytes over the bottleneck."""
        return self.latency_s + (nbytes / self.bottleneck_bytes_per_s if self.segments else 0.0)


@dataclass(frozen=True)
class Endpoint:
    kind: str  # "cell", "dip" or "host"
    depth: int  # cell: levels below the top that the path names
    rc: tuple[int, int]  # cell: global (row, col) at that depth; dip/host: (index, 0)
    text: str


class Topology:
    """Routes between endpoints of one system. Construction is O(levels), never O(nodes)."""

    def __init__(self, spec: SystemSpec) -> None:
        self.spec = spec
        # Top-down: the level whose children the k-th path component names.
        self._down = list(reversed(spec.levels))
        self._child_names = [*reversed(spec.level_names[:-1])]
        self.dips = dip_count(spec)
        self.hosts = host_count(spec)

    # -- endpoints -------------------------------------------------------------------------
    def endpoint(self, text: str) -> Endpoint:
        """Parse an endpoint path; `DojoError` says what the system's levels are when it is bad."""
        parts = [p.strip() for p in text.strip().split("/") if p.strip()]
        if len(parts) == 1 and (m := _COMPONENT.match(parts[0])) and m[1] in ("dip", "host"):
            limit = self.dips if m[1] == "dip" else self.hosts
            index = int(m[2])
            if m[3] is not None or index >= limit:
                raise DojoError(f"endpoint '{text}': {self.spec.name} has {limit} {m[1]}s "
                                f"(indices 0..{limit - 1})")
            return Endpoint(m[1], 0, (index, 0), text)
        if not parts or len(parts) > len(self._down):
            raise DojoError(f"endpoint '{text}': expected a path like {self.example()}")
        row = col = 0
        for k, part in enumerate(parts):
            r, c = self._component(text, k, part)
            rows, cols = self._grid(k)
            row, col = row * rows + r, col * cols + c
        return Endpoint("cell", len(parts), (row, col), text)

    def example(self) -> str:
        return "/".join(f"{n}[0]" for n in self._child_names)

    def _component(self, text: str, k: int, part: str) -> tuple[int, int]:
        m = _COMPONENT.match(part)
        name = self._child_names[k]
        level = self._down[k]
        rows, cols = self._grid(k)
        if m is None or m[1] != name:
            raise DojoError(f"endpoint '{text}': component {k + 1} should be {name}[i] or "
                            f"{name}[row,col], as in {self.example()}")
        if m[3] is None:
            index = int(m[2])
            r, c = divmod(index, cols)
        else:
            r, c = int(m[2]), int(m[3])
            index = r * cols + c
        if r >= rows or c >= cols or index >= level.spec.count:
            raise DojoError(f"endpoint '{text}': {part} is outside {level.name}'s "
                            f"{level.spec.count} {name}s in a {rows} x {cols} grid")
        return r, c

    def _grid(self, k: int) -> tuple[int, int]:
        spec = self._down[k].spec
        return spec.grid if spec.topology == "mesh2d" and spec.grid else (1, spec.count)

    def _extent(self, k: int, depth: int) -> tuple[int, int]:
        """(rows, cols) in depth-`depth` cells of one unit of the level named by component k."""
        rows = cols = 1
        for j in range(k + 1, depth):
            r, c = self._grid(j)
            rows, cols = rows * r, cols * c
        return rows, cols

    # -- routes ----------------------------------------------------------------------------
    def route(self, a: str, b: str, via: str = "auto", nbytes: float = 0.0) -> Route:
        """Route from `a` to `b`. `via`: "mesh", "zplane" or "auto" (faster for `nbytes`)."""
        ea, eb = self.endpoint(a), self.endpoint(b)
        if via not in ("auto", "mesh", "zplane"):
            raise DojoError(f"route via '{via}': expected auto, mesh or zplane")
        if ea.kind == eb.kind == "cell":
            if ea.depth != eb.depth:
                raise DojoError(f"route '{a}' -> '{b}': both endpoints must name the same level")
            options = []
            if via in ("auto", "mesh"):
                options.append(Route(a, b, "mesh", self._cell_path(ea, eb)))
            if via in ("auto", "zplane") and self.dips:
                options.append(Route(a, b, "zplane", self._zplane(ea, eb)))
            if not options:
                raise DojoError(f"{self.spec.name} has no DIPs, so no Z-plane route")
            return min(options, key=lambda r: (r.time_s(nbytes), r.via != "mesh"))
        return Route(a, b, "attachment", self._attachment_path(ea, eb))

    def _cell_path(self, ea: Endpoint, eb: Endpoint) -> tuple[Segment, ...]:
        if all(self._down[k].spec.topology == "mesh2d" for k in range(ea.depth)):
            return self._mesh(ea.rc, eb.rc, ea.depth)
        return self._switched(ea, eb)

    def _mesh(self, a: tuple[int, int], b: tuple[int, int], depth: int) -> tuple[Segment, ...]:
        segs = []
        for axis in (1, 0):  # X (columns) first, then Y (rows)
            lo, hi = sorted((a[axis], b[axis]))
            outer = 0  # crossings of coarser boundaries, already counted at their own level
            for k in range(depth):
                rows, cols = self._extent(k, depth)
                width = cols if axis == 1 else rows
                crossings = hi // width - lo // width
                hops = crossings - outer
                outer = crossings
                if hops <= 0:
                    continue
                link = self._down[k].spec.link
                lanes = rows if axis == 1 else cols
                segs.append(Segment(link.name, self._down[k].name, hops,
                                    link.bytes_per_s * link.ports / lanes, link.latency_s))
        return tuple(segs)

    def _switched(self, ea: Endpoint, eb: Endpoint) -> tuple[Segment, ...]:
        # Highest level at which the two paths differ decides the fabric crossed.
        for k in range(ea.depth):
            rows, cols = self._extent(k, ea.depth)
            ua = (ea.rc[0] // rows, ea.rc[1] // cols)
            ub = (eb.rc[0] // rows, eb.rc[1] // cols)
            if ua != ub:
                spec = self._down[k].spec
                hops = 2
                if spec.topology == "fat_tree" and spec.leaf_group:
                    _, units = self._grid(k)
                    ia, ib = ua[0] * units + ua[1], ub[0] * units + ub[1]
                    hops = 2 if ia // spec.leaf_group == ib // spec.leaf_group else 4
                return (Segment(spec.link.name, self._down[k].name, hops,
                                spec.link.bytes_per_s, spec.link.latency_s),)
        return ()

    # -- DIPs, hosts and the Z-plane -------------------------------------------------------
    def dip_cell(self, index: int, depth: int) -> tuple[int, int]:
        """Global (row, col), at `depth`, of the mesh cell where DIP `index` plugs into its tile."""
        dip = self.spec.dip
        if dip is None:
            raise DojoError(f"{self.spec.name} has no DIPs")
        per_unit = dip.per_edge * len(dip.placement.edges)
        unit, rest = divmod(index, per_unit)
        edge, slot = divmod(rest, dip.per_edge)
        tr, tc, side = dip.placement.edges[edge]
        k_unit = self._child_names.index(dip.placement.level) if (
            dip.placement.level in self._child_names) else -1
        # Walk down: the placement unit (flat index `unit`), then the tile at (tr, tc) inside it.
        row = col = 0
        path = self._flat_path(unit, k_unit) + [(tr, tc)]
        for k, (r, c) in enumerate(path[: depth]):
            rows, cols = self._grid(k)
            row, col = row * rows + r, col * cols + c
        tile_depth = len(path)
        if depth <= tile_depth:
            return row, col
        h, w = self._extent(tile_depth - 1, depth)
        row, col = row * h, col * w
        frac = (slot + 0.5) / dip.per_edge
        along_r, along_c = int(frac * h), int(frac * w)
        return {"west": (row + along_r, col), "east": (row + along_r, col + w - 1),
                "north": (row, col + along_c), "south": (row + h - 1, col + along_c)}[side]

    def _flat_path(self, unit: int, k_unit: int) -> list[tuple[int, int]]:
        """Grid positions from the top down to the `unit`-th unit named by component k_unit."""
        path = []
        for k in range(k_unit, -1, -1):
            rows, cols = self._grid(k)
            unit, pos = divmod(unit, rows * cols)
            path.append(divmod(pos, cols))
        return list(reversed(path))

    def nearest_dip(self, cell: tuple[int, int], depth: int, among: range | None = None) -> int:
        candidates = among if among is not None else range(self.dips)
        return min(candidates, key=lambda d: _manhattan(self.dip_cell(d, depth), cell))

    def _zplane(self, ea: Endpoint, eb: Endpoint) -> tuple[Segment, ...]:
        da = self.nearest_dip(ea.rc, ea.depth)
        db = self.nearest_dip(eb.rc, eb.depth)
        return (*self._mesh(ea.rc, self.dip_cell(da, ea.depth), ea.depth),
                *self._dip_hop("ttp"), *self._ethernet(da, db), *self._dip_hop("ttp"),
                *self._mesh(self.dip_cell(db, eb.depth), eb.rc, eb.depth))

    def _dip_hop(self, which: str, hops: int = 1) -> tuple[Segment, ...]:
        dip = self.spec.dip
        if dip is None:
            return ()
        link: LinkSpec = getattr(dip, which)
        return (Segment(link.name, "dip", hops, link.bytes_per_s, link.latency_s),)

    def _ethernet(self, da: int, db: int) -> tuple[Segment, ...]:
        if da == db or self.spec.dip is None:
            return ()
        eth = self.spec.dip.ethernet
        per_hop = eth.latency_s + self.spec.dip.switch_latency_s / 2
        return (Segment(eth.name, "zplane", 2, eth.bytes_per_s, per_hop),)

    def _attachment_path(self, ea: Endpoint, eb: Endpoint) -> tuple[Segment, ...]:
        if ea.kind == "cell":
            return tuple(reversed(self._attachment_path(eb, ea)))
        per_host = self.spec.host.dips if self.spec.host else 1
        first = ea.rc[0] if ea.kind == "dip" else ea.rc[0] * per_host
        own = range(first, first + (1 if ea.kind == "dip" else per_host))
        pcie = self._dip_hop("pcie") if ea.kind == "host" else ()
        if eb.kind == "cell":
            dip = self.nearest_dip(eb.rc, eb.depth, own)
            return (*pcie, *self._dip_hop("ttp"),
                    *self._mesh(self.dip_cell(dip, eb.depth), eb.rc, eb.depth))
        if eb.kind == "dip":
            if eb.rc[0] in own:
                return pcie
            return (*pcie, *self._ethernet(own[0], eb.rc[0]))
        other = range(eb.rc[0] * per_host, (eb.rc[0] + 1) * per_host)
        if own == other:
            return ()
        return (*pcie, *self._ethernet(own[0], other[0]), *self._dip_hop("pcie"))


def _manhattan(a: tuple[int, int], b: tuple[int, int]) -> int:
    return abs(a[0] - b[0]) + abs(a[1] - b[1])
