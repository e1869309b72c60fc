"""Figures derived from a `SystemSpec`: counts, peaks, capacities, bisection, power.

Pure functions of the spec; every total is computed from the per-unit figures in the data file,
so the published totals (362 TFLOPS per D1, 1.1 EFLOPS per ExaPOD...) are checks, not inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from dojo.hardware.loader import dip_count, host_count, units_of
from dojo.hardware.spec import LevelSpec, SystemSpec

# Level names the summary reports as counts (JSON key -> level name).
_COUNT_KEYS = {"nodes": "node", "chips": "chip", "tiles": "tile", "gpus": "gpu"}


@dataclass(frozen=True, kw_only=True)
class LinkRow:
    """One link class of the system, for the `dojo info` table."""

    level: str
    name: str
    role: str
    bytes_per_s: float
    latency_s: float
    count: int


@dataclass(frozen=True, kw_only=True)
class Summary:
    """What `dojo info` shows. Bytes, bytes/s, FLOP/s, watts."""

    name: str
    title: str
    family: str
    counts: Mapping[str, int]
    peak_flops: Mapping[str, float]
    sram_bytes: float
    hbm_bytes: float
    sram_read_bytes_per_s: float
    hbm_bytes_per_s: float
    bisection_bytes_per_s: float
    power_watts: float
    links: tuple[LinkRow, ...]

    def to_json(self) -> dict[str, Any]:
        """The machine-readable form; keys exactly as documented for `dojo info --json`."""
        return {
            "name": self.name,
            **{key: self.counts[key]
               for key in ("nodes", "chips", "tiles", "dips", "hosts", "gpus")},
            "peak_flops": dict(self.peak_flops),
            "sram_bytes": self.sram_bytes,
            "hbm_bytes": self.hbm_bytes,
            "power_watts": self.power_watts,
            "bisection_bytes_per_s": self.bisection_bytes_per_s,
        }


def summarize(spec: SystemSpec) -> Summary:
    """Derive every figure `dojo info` reports from the per-unit data."""
    leaves = units_of(spec, spec.leaf_name)
    counts = {key: units_of(spec, level) for key, level in _COUNT_KEYS.items()}
    counts["dips"] = dip_count(spec)
    counts["hosts"] = host_count(spec) if spec.family == "dojo" else units_of(spec, "server")
    dip_hbm = spec.dip.hbm if spec.dip else None
    sram = spec.leaf.memory.get("sram")
    hbm = spec.leaf.memory.get("hbm")
    return Summary(
        name=spec.name,
        title=spec.title,
        family=spec.family,
        counts=MappingProxyType(counts),
        peak_flops=MappingProxyType({k: v * leaves for k, v in spec.leaf.peak_flops.items()}),
        sram_bytes=(sram.bytes * leaves) if sram else 0.0,
        hbm_bytes=(hbm.bytes * leaves if hbm else 0.0)
        + (dip_hbm.bytes * counts["dips"] if dip_hbm else 0.0),
        sram_read_bytes_per_s=(sram.read_bytes_per_s * leaves) if sram else 0.0,
        hbm_bytes_per_s=(hbm.read_bytes_per_s * leaves if hbm else 0.0)
        + (dip_hbm.read_bytes_per_s * counts["dips"] if dip_hbm else 0.0),
        bisection_bytes_per_s=bisection(spec),
        power_watts=power(spec),
        links=link_rows(spec),
    )


def power(spec: SystemSpec) -> float:
    """Total power in watts: leaves, per-level overheads, DIPs and hosts."""
    unit = spec.leaf.power_watts
    for lv in spec.levels:
        unit = lv.spec.count * unit + lv.spec.overhead_watts
    if spec.dip is not None and spec.host is not None:
        unit += dip_count(spec) * spec.dip.power_watts + host_count(spec) * spec.host.power_watts
    return unit


def level_bisection(level: LevelSpec) -> float:
    """Bisection bandwidth of one unit of a level, per direction, in bytes/s (0 if one child)."""
    if level.bisection_bytes_per_s is not None:
        return level.bisection_bytes_per_s
    if level.count < 2:
        return 0.0
    per_link = level.link.bytes_per_s * level.link.ports
    if level.topology == "mesh2d" and level.grid is not None:
        rows, cols = level.grid
        return min(rows, cols) * per_link if max(rows, cols) > 1 else 0.0
    return (level.count // 2) * per_link


def bisection(spec: SystemSpec) -> float:
    """The system's bisection: that of the highest level with more than one child."""
    for lv in reversed(spec.levels):
        if lv.spec.count > 1:
            return level_bisection(lv.spec)
    return 0.0


def link_rows(spec: SystemSpec) -> tuple[LinkRow, ...]:
    """Every link class with its level, role and how many units use it."""
    rows = []
    for lv in spec.levels:
        s = lv.spec
        units = units_of(spec, lv.name)
        role = f"between {_child(spec, lv.name)}s"
        rows.append(LinkRow(level=lv.name, name=s.link.name, role=role,
                            bytes_per_s=s.link.bytes_per_s * s.link.ports,
                            latency_s=s.link.latency_s, count=units))
        if s.edge is not None:
            rows.append(LinkRow(level=lv.name, name=s.edge.name, role=f"{lv.name} edge",
                                bytes_per_s=s.edge.bytes_per_s, latency_s=s.edge.latency_s,
                                count=units * s.edges))
    if spec.dip is not None:
        dips = dip_count(spec)
        for role, link in (("DIP to tile", spec.dip.ttp), ("DIP Z-plane", spec.dip.ethernet),
                           ("DIP to host", spec.dip.pcie)):
            rows.append(LinkRow(level="dip", name=link.name, role=role,
                                bytes_per_s=link.bytes_per_s, latency_s=link.latency_s,
                                count=dips))
    return tuple(rows)


def _child(spec: SystemSpec, level_name: str) -> str:
    names = spec.level_names
    return names[names.index(level_name) - 1]
