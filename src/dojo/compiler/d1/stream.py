"""Streaming from DIP HBM: what bandwidth and latency each chip gets, given where the DIPs sit.

Model (documented in docs/d1.md):
- DIPs repeat once per unit of their placement level (a tray in V1), on the tile edges the system
  file names. The chips of one such unit share its DIPs; every unit is alike, so one is computed.
- A chip reads from every DIP of its unit (the compiler stripes spilled tensors over them, as
  Tesla's "per-edge DIP memory acts as shared memory"), so DIP bandwidth is pooled: each DIP gives
  min(HBM read, TTP) bytes/s, and the unit's total is split evenly over the chips streaming.
- Mesh distance counts twice: the route from a chip's nearest DIP (TTP, then D1 edges and tile
  edges, each shared by the lanes along it, see dojo.hardware.topology) carries that chip's data
  together with that of every other chip the same DIP is nearest to, which caps the chip at the
  route's bottleneck over that count; and the route's hop latencies are the stream's latency.
Chips are numbered unit-major, row-major inside each level (`chip_path`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dojo.hardware.loader import dip_count, units_of
from dojo.hardware.spec import SystemSpec
from dojo.hardware.topology import Topology


@dataclass(frozen=True)
class ChipStream:
    """One chip's stream from DIP HBM: `bytes_per_s`, `latency_s`, via its nearest `dip`;
    `route_bytes_per_s` is the mesh/TTP route's share alone (no HBM limit)."""

    chip: str
    dip: int
    hops: int
    bytes_per_s: float
    latency_s: float
    route_bytes_per_s: float


@dataclass(frozen=True)
class StreamShare:
    """The streams of one placement unit (`chips` of them, `dips` DIPs), and the worst chip's.

    `hbm_bytes_per_chip` is the unit's DIP HBM capacity split evenly over the streaming chips.
    Everything is 0 when the system has no DIPs.
    """

    chips: int
    dips: int
    streams: tuple[ChipStream, ...]
    bytes_per_s: float
    latency_s: float
    hbm_bytes_per_chip: float


_CACHE: dict[tuple[int, int], tuple[SystemSpec, StreamShare]] = {}


def _grid(spec: SystemSpec, index: int) -> tuple[int, int]:
    level = spec.levels[index].spec
    return level.grid if level.topology == "mesh2d" and level.grid else (1, level.count)


def chip_path(spec: SystemSpec, index: int) -> str:
    """Endpoint path of chip `index` (unit-major order), e.g. 'tile[0,1]/chip[2,3]' in v1."""
    if len(spec.levels) == 1:
        return spec.levels[0].name
    parts = []
    for i in range(len(spec.levels) - 1, 0, -1):  # top level first: it names its children
        below = math.prod(lv.spec.count for lv in spec.levels[1:i])
        pos = (index // below) % spec.levels[i].spec.count
        cols = _grid(spec, i)[1]
        parts.append(f"{spec.level_names[i]}[{pos // cols},{pos % cols}]")
    return "/".join(parts)


def chips_per_unit(spec: SystemSpec) -> int:
    """Chips in one unit of the DIP placement level (the whole system when there are no DIPs)."""
    chips = units_of(spec, spec.levels[0].name)
    if spec.dip is None or spec.dip.placement.level not in spec.level_names:
        return chips
    return chips // units_of(spec, spec.dip.placement.level)


def stream_share(spec: SystemSpec, active: int | None = None) -> StreamShare:
    """Per-chip DIP streams for `active` streaming chips per unit (default: all of them)."""
    per_unit = chips_per_unit(spec)
    active = per_unit if active is None else max(1, min(active, per_unit))
    key = (id(spec), active)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is spec:
        return hit[1]
    share = _compute(spec, per_unit, active)
    _CACHE[key] = (spec, share)
    return share


def _compute(spec: SystemSpec, per_unit: int, active: int) -> StreamShare:
    dip = spec.dip
    if dip is None or dip_count(spec) == 0 or len(spec.levels) < 2:
        return StreamShare(chips=per_unit, dips=0, streams=(), bytes_per_s=0.0, latency_s=0.0,
                           hbm_bytes_per_chip=0.0)
    topo = Topology(spec)
    dips = dip.per_edge * len(dip.placement.edges)
    depth = len(spec.levels) - 1
    paths = [chip_path(spec, i) for i in range(active)]
    cells = [topo.endpoint(p).rc for p in paths]
    nearest = [topo.nearest_dip(c, depth, range(dips)) for c in cells]
    served = {d: nearest.count(d) for d in set(nearest)}
    per_dip = min(dip.hbm.read_bytes_per_s, dip.ttp.bytes_per_s * dip.ttp.ports)
    pooled = dips * per_dip / active
    streams = []
    for path, d in zip(paths, nearest):
        route = topo.route(f"dip[{d}]", path)
        lane = route.bottleneck_bytes_per_s / served[d]
        streams.append(ChipStream(path, d, route.hops, min(pooled, lane), route.latency_s, lane))
    return StreamShare(chips=per_unit, dips=dips, streams=tuple(streams),
                       bytes_per_s=min(s.bytes_per_s for s in streams),
                       latency_s=max(s.latency_s for s in streams),
                       hbm_bytes_per_chip=dips * dip.hbm.bytes / active)

