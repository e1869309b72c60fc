"""SRAM-only memory planning: what lives in node SRAM, what spills to DIP HBM, or OOM.

A D1 has no cache and no DRAM: a chip's memory is its nodes' SRAM. Per chip, the planner keeps
in SRAM, in this order, the op working set (double-buffered tiles; it cannot spill), the
parameters (read in forward and backward of every micro-batch), the gradients (accumulated every
micro-batch), the activations (written once, read once) and last the optimizer state (touched
once per step), and spills the rest to the DIP HBM of the chip's placement unit, shared evenly by
its chips (dojo.compiler.d1.stream). What fits in neither is an out-of-memory error that names
each short chip and its bytes, as a compiler would report it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dojo.compiler.d1.stream import ChipStream, chip_path, chips_per_unit, stream_share
from dojo.errors import DojoError
from dojo.hardware.loader import units_of
from dojo.hardware.spec import SystemSpec

CATEGORIES = ("working", "params", "grads", "activations", "optimizer")


@dataclass(frozen=True)
class ChipPlan:
    """One chip: bytes of each category in SRAM and in DIP HBM; its stream bandwidth."""

    chip: str
    sram_bytes: float
    hbm_bytes: float
    resident: tuple[tuple[str, float], ...]
    spilled: tuple[tuple[str, float], ...]
    stream_bytes_per_s: float
    stream_latency_s: float

    @property
    def resident_bytes(self) -> float:
        return sum(v for _, v in self.resident)

    @property
    def spilled_bytes(self) -> float:
        return sum(v for _, v in self.spilled)

    def stream_time_s(self, nbytes: float) -> float:
        """Seconds to stream `nbytes` between this chip and DIP HBM (0 for 0 bytes)."""
        if nbytes <= 0:
            return 0.0
        if self.stream_bytes_per_s <= 0:
            raise DojoError(f"{self.chip}: no DIP HBM to stream {nbytes:.3g} bytes from")
        return self.stream_latency_s + nbytes / self.stream_bytes_per_s


@dataclass(frozen=True)
class SramPlan:
    """The plan of every chip used, in chip order (unit-major, see `chip_path`)."""

    system: str
    chips: tuple[ChipPlan, ...]

    @property
    def fits_in_sram(self) -> bool:
        return all(c.spilled_bytes == 0 for c in self.chips)

    @property
    def spilled_bytes(self) -> float:
        return sum(c.spilled_bytes for c in self.chips)


@dataclass(frozen=True)
class Shortfall:
    """A chip that does not fit: what it needs and what it has, in bytes."""

    chip: str
    needed: tuple[tuple[str, float], ...]
    sram_bytes: float
    hbm_bytes: float

    @property
    def needed_bytes(self) -> float:
        return sum(v for _, v in self.needed)

    @property
    def short_bytes(self) -> float:
        return self.needed_bytes - self.sram_bytes - self.hbm_bytes


class SramOutOfMemory(DojoError):
    """The plan does not fit: `shortfalls` lists each chip that is short, worst first."""

    def __init__(self, system: str, chips: int, shortfalls: Sequence[Shortfall]) -> None:
        self.system = system
        self.shortfalls = tuple(sorted(shortfalls, key=lambda s: -s.short_bytes))
        w = self.shortfalls[0]
        need = ", ".join(f"{k} {v:.4g}" for k, v in w.needed if v)
        super().__init__(
            f"{system}: out of memory on {len(self.shortfalls)} of {chips} chips; worst "
            f"{w.chip} needs {w.needed_bytes:.4g} bytes ({need}) but has {w.sram_bytes:.4g} "
            f"bytes of SRAM and {w.hbm_bytes:.4g} bytes of DIP HBM: short by "
            f"{w.short_bytes:.4g} bytes")


def _per_chip(name: str, value: float | Sequence[float], chips: int) -> list[float]:
    values = [float(value)] * chips if isinstance(value, int | float) else [float(v) for v in value]
    if len(values) != chips:
        raise DojoError(f"plan_sram: {name} has {len(values)} values for {chips} chips")
    if any(v < 0 for v in values):
        raise DojoError(f"plan_sram: {name} holds a negative byte count")
    return values


def plan_sram(params_bytes: float | Sequence[float], grads_bytes: float | Sequence[float],
              optimizer_bytes: float | Sequence[float],
              activation_bytes: float | Sequence[float], spec: SystemSpec, chips: int,
              working_bytes: float | Sequence[float] = 0.0) -> SramPlan:
    """Place each chip's bytes (one number for all chips, or one per chip) in SRAM, then DIP HBM.

    Raises `SramOutOfMemory` naming every chip whose bytes exceed its SRAM plus its share of DIP
    HBM (or whose working set alone exceeds its SRAM).
    """
    total = units_of(spec, spec.levels[0].name)
    if not 1 <= chips <= total:
        raise DojoError(f"plan_sram: chips = {chips}: expected 1..{total} ({spec.name} chips)")
    values = {name: _per_chip(name, v, chips) for name, v in zip(
        CATEGORIES, (working_bytes, params_bytes, grads_bytes, activation_bytes,
                     optimizer_bytes))}
    leaf = spec.leaf
    sram = leaf.memory["sram"].bytes * spec.levels[0].spec.count
    per_unit = chips_per_unit(spec)
    share = stream_share(spec, active=min(chips, per_unit))
    plans, short = [], []
    for i in range(chips):
        path = chip_path(spec, i)
        need = tuple((c, values[c][i]) for c in CATEGORIES)
        stream = share.streams[i % per_unit] if share.streams else None
        plan = _place(path, need, sram, share.hbm_bytes_per_chip, stream)
        if plan is None:
            short.append(Shortfall(path, need, sram, share.hbm_bytes_per_chip))
        else:
            plans.append(plan)
    if short:
        raise SramOutOfMemory(spec.name, chips, short)
    return SramPlan(system=spec.name, chips=tuple(plans))


def _place(path: str, need: tuple[tuple[str, float], ...], sram: float, hbm: float,
           stream: ChipStream | None) -> ChipPlan | None:
    """Fill SRAM in category order; None when it does not fit (working set beyond SRAM, or the
    spill beyond the HBM share)."""
    free = sram
    resident, spilled = [], []
    for name, nbytes in need:
        keep = min(nbytes, free)
        if name == "working" and keep < nbytes:
            return None
        free -= keep
        resident.append((name, keep))
        spilled.append((name, nbytes - keep))
    if sum(v for _, v in spilled) > hbm:
        return None
    return ChipPlan(chip=path, sram_bytes=sram, hbm_bytes=hbm, resident=tuple(resident),
                    spilled=tuple(spilled),
                    stream_bytes_per_s=stream.bytes_per_s if stream else 0.0,
                    stream_latency_s=stream.latency_s if stream else 0.0)
