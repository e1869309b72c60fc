"""Frozen, typed descriptions of a system, as read from a TOML data file.

Units everywhere: bytes, bytes per second, seconds, FLOP per second, watts, joules per byte.
A system is a hierarchy of levels, leaf first: for Dojo `node -> chip -> tile -> tray -> ...`,
for a GPU cluster `gpu -> server -> cluster`. The leaf is the compute unit (`LeafSpec`); every
other level (`LevelSpec`) groups `count` units of the level below and says how they are wired.
Dojo systems may also carry interface processors (`DipSpec`) and hosts (`HostSpec`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dojo.config import check

TOPOLOGIES = ("mesh2d", "switch", "fat_tree")
SIDES = ("north", "south", "east", "west")
FAMILIES = ("dojo", "gpu")


@dataclass(frozen=True, kw_only=True)
class LinkSpec:
    """A link class: bandwidth per direction of one link, per-hop latency, energy per byte."""

    name: str
    bytes_per_s: float = field(metadata=check(gt=0, unit="bytes/s"))
    latency_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    ports: int = field(default=1, metadata=check(ge=1))
    energy_j_per_byte: float = field(default=0.0, metadata=check(ge=0, unit="J/byte"))
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class MemorySpec:
    """A memory pool of one unit: capacity and load/store bandwidth. `reserved_bytes`: what a
    CUDA training process holds there whatever its plan (context and library workspaces,
    `sim/reserve.py`); a GPU with a reserve also holds its plan's NCCL buffers."""

    bytes: float = field(metadata=check(gt=0, unit="bytes"))
    read_bytes_per_s: float = field(metadata=check(gt=0, unit="bytes/s"))
    write_bytes_per_s: float = field(metadata=check(gt=0, unit="bytes/s"))
    energy_j_per_byte: float = field(default=0.0, metadata=check(ge=0, unit="J/byte"))
    reserved_bytes: float = field(default=0.0, metadata=check(ge=0, unit="bytes"))


@dataclass(frozen=True, kw_only=True)
class LeafSpec:
    """The compute unit: a Dojo training node or a GPU.

    `peak_flops` maps a dtype name (fp32, bf16, cfp8, fp16...) to dense peak FLOP/s;
    `memory` maps a pool name (sram, hbm) to its `MemorySpec`.
    """

    peak_flops: Mapping[str, float] = field(metadata=check(gt=0, unit="FLOP/s"))
    memory: Mapping[str, MemorySpec]
    power_watts: float = field(default=0.0, metadata=check(ge=0, unit="W"))
    idle_watts: float = field(default=0.0, metadata=check(ge=0, unit="W"))
    clock_hz: float = field(default=0.0, metadata=check(ge=0, unit="Hz"))
    matrix_flops_per_cycle: int = field(default=0, metadata=check(ge=0))
    simd_bytes: int = field(default=0, metadata=check(ge=0, unit="bytes"))
    threads: int = field(default=1, metadata=check(ge=1))
    cost_model: str = ""  # name of the simulator's calibration for this device kind
    compute_units: int = field(default=0, metadata=check(ge=0))  # SMs of a GPU
    note: str = ""
    # Fields of the `cost_model` calibration this system overrides (a file written by
    # `dojo calibrate` carries its fitted efficiencies here), and per software stack (`stacks`,
    # selected with `--stack` or a validation case's `stack`), overrides on top of those.
    calibration: Mapping[str, float] = field(default_factory=dict)
    stacks: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class LevelSpec:
    """A level that groups `count` units of the level below.

    `topology` says how the children connect: `mesh2d` (a `grid` of rows x cols, neighbours joined
    by `link`, no wraparound), `switch` (every child one `link` hop from a crossbar, e.g. NVSwitch)
    or `fat_tree` (a non-blocking switched fabric; `link.ports` links per child, `leaf_group`
    children per leaf switch). `edge` is what leaves one unit of this level (per edge, `edges` of
    them). `overhead_watts` is power beyond the children's (regulation, CPUs, fans, NICs).
    `bisection_bytes_per_s`, when given, is a published figure that overrides the derived one.
    """

    count: int = field(metadata=check(ge=1))
    topology: str = field(metadata=check(choices=TOPOLOGIES))
    link: LinkSpec
    grid: tuple[int, int] | None = None
    edge: LinkSpec | None = None
    edges: int = field(default=0, metadata=check(ge=0))
    leaf_group: int = field(default=0, metadata=check(ge=0))
    overhead_watts: float = field(default=0.0, metadata=check(ge=0, unit="W"))
    bisection_bytes_per_s: float | None = field(default=None, metadata=check(gt=0, unit="bytes/s"))
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class DipPlacement:
    """Which tile edges carry DIPs, repeated once per unit of `level` (e.g. per tray)."""

    level: str
    edges: tuple[tuple[int, int, str], ...]


@dataclass(frozen=True, kw_only=True)
class DipSpec:
    """Dojo Interface Processor: HBM between the tiles and the hosts."""

    per_edge: int = field(metadata=check(ge=1))
    hbm: MemorySpec
    ttp: LinkSpec
    ethernet: LinkSpec
    pcie: LinkSpec
    placement: DipPlacement
    power_watts: float = field(default=0.0, metadata=check(ge=0, unit="W"))
    count: int | None = field(default=None, metadata=check(ge=1))
    switch_latency_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class HostSpec:
    """Host CPUs that feed the DIPs over PCIe."""

    dips: int = field(metadata=check(ge=1))
    cpu_cores: int = field(metadata=check(ge=1))
    power_watts: float = field(default=0.0, metadata=check(ge=0, unit="W"))
    count: int | None = field(default=None, metadata=check(ge=1))
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class Level:
    """One named level of the hierarchy (not the leaf)."""

    name: str
    spec: LevelSpec


@dataclass(frozen=True, kw_only=True)
class SystemSpec:
    """A whole system: the leaf, the levels above it (bottom to top), attachments, provenance."""

    name: str
    title: str
    family: str
    source: str
    path: str
    leaf_name: str
    leaf: LeafSpec
    levels: tuple[Level, ...]
    dip: DipSpec | None = None
    host: HostSpec | None = None

    @property
    def level_names(self) -> tuple[str, ...]:
        """Names leaf first, e.g. ('node', 'chip', 'tile')."""
        return (self.leaf_name, *(lv.name for lv in self.levels))

    def level(self, name: str) -> Level:
        for lv in self.levels:
            if lv.name == name:
                return lv
        raise KeyError(name)
