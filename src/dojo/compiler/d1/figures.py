"""The per-node and per-chip figures the D1 mapper works from, read from a `SystemSpec`.

Hardware is data: every number here comes from the system file (node = the leaf, chip = the first
level above it). The only constants are properties of number formats (bytes per element, and FP32
accumulation of products, as the D1 matrix unit does it).
"""

from __future__ import annotations

from dataclasses import dataclass

from dojo.errors import DojoError
from dojo.hardware.spec import SystemSpec

# Bytes per element of each format the mapper knows.
DTYPE_BYTES: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2, "cfp16": 2, "cfp8": 1, "fp8": 1}
ACC_BYTES = 4  # products accumulate in FP32


@dataclass(frozen=True)
class ChipFigures:
    """One chip as the mapper sees it. Units: FLOP/s, bytes, bytes/s, seconds.

    `stream_bytes_per_s` is the DIP HBM bandwidth one chip gets when every chip of the system
    streams at once (0 when the system has no DIPs); `stream_latency_s` the route latency from
    its DIP. See `dojo.compiler.d1.stream` for how they are derived.
    """

    system: str
    nodes: int
    grid: tuple[int, int]
    peak_flops: tuple[tuple[str, float], ...]
    matrix_flops_per_s: float
    simd_flops_per_s: float
    sram_bytes: float
    sram_read_bytes_per_s: float
    sram_write_bytes_per_s: float
    link_bytes_per_s: float
    hop_latency_s: float
    stream_bytes_per_s: float
    stream_latency_s: float

    def matrix_rate(self, dtype: str) -> float:
        """FLOP/s of one node's matrix unit in `dtype` (the spec's peak for it, capped by the
        matrix unit's FLOP per cycle x clock)."""
        rates = dict(self.peak_flops)
        if dtype not in rates:
            raise DojoError(f"dtype '{dtype}': {self.system} has no peak rate for it; "
                            f"known: {', '.join(rates)}")
        return min(rates[dtype], self.matrix_flops_per_s) if self.matrix_flops_per_s else (
            rates[dtype])


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of `dtype`; `DojoError` listing the known formats otherwise."""
    if dtype not in DTYPE_BYTES:
        raise DojoError(f"dtype '{dtype}': expected one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def chip_figures(spec: SystemSpec, stream_bytes_per_s: float | None = None) -> ChipFigures:
    """Read the node and chip figures from `spec` (a Dojo system: node leaf, chip level first).

    `stream_bytes_per_s` overrides the derived DIP stream share per chip (e.g. when only some
    chips stream at once).
    """
    from dojo.compiler.d1.stream import stream_share  # stream needs the topology; keep it lazy

    leaf = spec.leaf
    if spec.family != "dojo" or not spec.levels or "sram" not in leaf.memory:
        raise DojoError(f"system '{spec.name}': the D1 mapper needs a Dojo system whose "
                        f"{spec.leaf_name}s have SRAM (got family '{spec.family}')")
    chip = spec.levels[0].spec
    grid = chip.grid if chip.grid is not None else (1, chip.count)
    sram = leaf.memory["sram"]
    share = stream_share(spec)
    bw = share.bytes_per_s if stream_bytes_per_s is None else stream_bytes_per_s
    return ChipFigures(
        system=spec.name,
        nodes=chip.count,
        grid=(int(grid[0]), int(grid[1])),
        peak_flops=tuple(sorted(leaf.peak_flops.items())),
        matrix_flops_per_s=leaf.matrix_flops_per_cycle * leaf.clock_hz,
        simd_flops_per_s=leaf.peak_flops.get("fp32", 0.0),
        sram_bytes=sram.bytes,
        sram_read_bytes_per_s=sram.read_bytes_per_s,
        sram_write_bytes_per_s=sram.write_bytes_per_s,
        link_bytes_per_s=chip.link.bytes_per_s * chip.link.ports,
        hop_latency_s=chip.link.latency_s,
        stream_bytes_per_s=bw,
        stream_latency_s=share.latency_s,
    )
