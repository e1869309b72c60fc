"""Vector ops, row-wise ops (norms, softmax), fused attention and the chip-level entry point.

Vector and row-wise ops stream through the nodes' SIMD units (FP32) and SRAM ports, split evenly
over the nodes; data larger than the nodes' SRAM streams from DIP HBM. Attention is modelled
fused, flash-attention style: a node holds a block of queries and its FP32 output, K and V tiles
arrive over the mesh double-buffered, and the (S, S) scores never leave SRAM. `d1_op_time` is the
function the simulator calls: it takes an `OpCost` from dojo.compiler.work (or a shape) and
returns seconds with a breakdown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dojo.compiler.d1.figures import ACC_BYTES, ChipFigures, chip_figures, dtype_bytes
from dojo.compiler.d1.matmul import COMPONENTS, Mapping, map_matmul, pacing_component
from dojo.compiler.work import OpCost
from dojo.errors import DojoError
from dojo.hardware.spec import SystemSpec

# An elementwise op given only its total bytes (OpCost) is taken to read two operands and write
# one result: 2/3 of its bytes are reads.
READ_SHARE = 2.0 / 3.0
SOFTMAX_FLOPS_PER_ELEMENT = 5.0  # max, subtract, exp, sum, scale: the usual count
_QUERY_BLOCKS = (16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class MatmulShape:
    """`batch` matmuls of (m x k) @ (k x n)."""

    m: int
    n: int
    k: int
    batch: int = 1


@dataclass(frozen=True)
class RowwiseShape:
    """A norm or softmax over `rows` rows of `cols` elements."""

    rows: int
    cols: int
    flops_per_element: float = SOFTMAX_FLOPS_PER_ELEMENT


@dataclass(frozen=True)
class AttentionShape:
    """softmax(Q K^T) V for `batch_heads` heads: Q (seq_q x head_dim), K, V (seq_kv x head_dim)."""

    batch_heads: int
    seq_q: int
    seq_kv: int
    head_dim: int
    causal: bool = False


@dataclass(frozen=True)
class StreamedOp:
    """A streamed (vector, row-wise or fused attention) op on `nodes` nodes. Seconds, bytes.

    Steady components run at once (time = the largest + `fill_s`); `mode` is "sram" when the data
    lives in the nodes' SRAM, "stream" when it comes from DIP HBM.
    """

    name: str
    nodes: int
    mode: str
    flops: float
    compute_s: float
    simd_s: float
    sram_read_s: float
    sram_write_s: float
    mesh_s: float
    hbm_s: float
    fill_s: float
    time_s: float

    @property
    def bound(self) -> str:
        """The steady-state component that sets the pace."""
        return pacing_component(self)


@dataclass(frozen=True)
class OpTime:
    """Seconds for one op on one chip, with the parts that made it and the mapping chosen."""

    time_s: float
    kind: str
    bound: str
    mode: str
    nodes: int
    parts: tuple[tuple[str, float], ...]
    mapping: Mapping | StreamedOp


def _figures(spec: SystemSpec | ChipFigures) -> ChipFigures:
    return spec if isinstance(spec, ChipFigures) else chip_figures(spec)


def _nodes(nodes: int | None, fig: ChipFigures) -> int:
    n = fig.nodes if nodes is None else nodes
    if not 1 <= n <= fig.nodes:
        raise DojoError(f"nodes = {nodes}: expected 1..{fig.nodes} (nodes of one chip)")
    return n


def map_vector(read_bytes: float, write_bytes: float, flops: float, nodes: int | None,
               spec: SystemSpec | ChipFigures, *, mesh_s: float = 0.0,
               name: str = "vector") -> StreamedOp:
    """An elementwise op split evenly over `nodes` nodes: SIMD (FP32 peak), SRAM ports, and DIP
    HBM when its bytes exceed the nodes' SRAM (then every byte also crosses SRAM both ways)."""
    if min(read_bytes, write_bytes, flops) < 0:
        raise DojoError(f"{name}: bytes and FLOP must be >= 0")
    fig = _figures(spec)
    n = _nodes(nodes, fig)
    stream = read_bytes + write_bytes > n * fig.sram_bytes
    if stream and fig.stream_bytes_per_s <= 0:
        raise DojoError(f"{name}: {read_bytes + write_bytes:.3g} bytes exceed the SRAM of {n} "
                        f"nodes ({n * fig.sram_bytes:.3g} bytes) and {fig.system} has no DIP HBM")
    moved = read_bytes + write_bytes
    reads = moved if stream else read_bytes
    writes = moved if stream else write_bytes
    hbm = moved / fig.stream_bytes_per_s if stream else 0.0
    simd = flops / (n * fig.simd_flops_per_s) if flops else 0.0
    parts = (0.0, simd, reads / (n * fig.sram_read_bytes_per_s),
             writes / (n * fig.sram_write_bytes_per_s), mesh_s, hbm)
    fill = 2 * fig.stream_latency_s if stream else 0.0
    return StreamedOp(name, n, "stream" if stream else "sram", float(flops), *parts,
                      fill, max(parts) + fill)


def map_rowwise(shape: RowwiseShape, dtype: str, nodes: int | None,
                spec: SystemSpec | ChipFigures) -> StreamedOp:
    """A norm or softmax: rows spread over the nodes; a row wider than its share of nodes is split
    along a line of nodes whose row statistics (FP32) meet in a reduce and a broadcast."""
    fig = _figures(spec)
    n = _nodes(nodes, fig)
    nbytes = float(shape.rows) * shape.cols * dtype_bytes(dtype)
    split = max(1, n // max(1, shape.rows))
    mesh = 2 * (split - 1) * fig.hop_latency_s + (2 * ACC_BYTES * math.ceil(shape.rows / n)
                                                  / fig.link_bytes_per_s if split > 1 else 0.0)
    flops = shape.flops_per_element * shape.rows * shape.cols
    return map_vector(nbytes, nbytes, flops, n, fig, mesh_s=mesh, name="rowwise")


def map_attention(shape: AttentionShape, dtype: str, nodes: int | None,
                  spec: SystemSpec | ChipFigures) -> StreamedOp:
    """Fused attention: work units are (head, query block); the query block size is searched."""
    fig = _figures(spec)
    n = _nodes(nodes, fig)
    d = dtype_bytes(dtype)
    bh, sq, skv, dh = shape.batch_heads, shape.seq_q, shape.seq_kv, shape.head_dim
    frac = 0.5 if shape.causal else 1.0
    io = 4.0 * bh * max(sq, skv) * dh * d  # Q, K, V, O
    stream = io > n * fig.sram_bytes
    if stream and fig.stream_bytes_per_s <= 0:
        raise DojoError(f"attention: Q, K, V and O need {io:.3g} bytes, more than {n} nodes' "
                        f"SRAM, and {fig.system} has no DIP HBM")
    bq = np.array([b for b in _QUERY_BLOCKS if b <= max(sq, _QUERY_BLOCKS[0])], dtype=float)
    bk = np.minimum(skv, 128.0)  # K/V tile rows per double-buffered step
    resident = 0.0 if stream else io / n
    need = resident + bq * dh * (d + ACC_BYTES) + bq * bk * (ACC_BYTES + d) + 4 * bk * dh * d
    units = np.ceil(bh * np.ceil(sq / bq) / n)
    kv = 2.0 * skv * dh * d * frac
    score = bq * skv * frac
    parts = np.array([
        units * 4 * bq * skv * dh * frac / fig.matrix_rate(dtype),
        units * SOFTMAX_FLOPS_PER_ELEMENT * score / fig.simd_flops_per_s,
        units * (kv + bq * dh * d + score * (ACC_BYTES + d)) / fig.sram_read_bytes_per_s,
        units * (kv + bq * dh * d + score * (ACC_BYTES + d)) / fig.sram_write_bytes_per_s,
        units * kv / fig.link_bytes_per_s,
        np.full_like(bq, io / fig.stream_bytes_per_s if stream else 0.0)])
    fill = (fig.grid[0] + fig.grid[1]) * fig.hop_latency_s + (
        fig.stream_latency_s if stream else 0.0)
    total = np.where(need <= fig.sram_bytes, parts.max(axis=0) + fill, np.inf)
    i = int(np.argmin(total))
    if not math.isfinite(total[i]):
        raise DojoError(f"attention: head_dim {dh} leaves no room for a query block in "
                        f"{fig.sram_bytes:.3g} bytes of SRAM")
    flops = 4.0 * bh * sq * skv * dh * frac
    c = [float(x) for x in parts[:, i]]
    return StreamedOp("attention", n, "stream" if stream else "sram", flops, c[0], c[1], c[2],
                      c[3], c[4], c[5], fill_s=fill, time_s=float(total[i]))


def equivalent_shape(flops: float, nbytes: float, dtype: str) -> MatmulShape:
    """A matmul with a square output (m = n) that has these FLOP and bytes: 2 m^2 k = flops and
    (2 m k + m^2) x dtype bytes = nbytes, taking the wider-output root; a cube when no root."""
    elems = nbytes / dtype_bytes(dtype)
    roots = np.roots([1.0, 0.0, -elems, flops])
    real = [r.real for r in roots if abs(r.imag) < 1e-9 * max(1.0, abs(r)) and r.real >= 1]
    m = max(real) if real else (flops / 2) ** (1 / 3)
    k = flops / (2 * m * m)
    return MatmulShape(max(1, round(m)), max(1, round(m)), max(1, round(k)))


def d1_op_time(op: OpCost | MatmulShape | RowwiseShape | AttentionShape,
               spec: SystemSpec | ChipFigures, nodes: int | None = None,
               dtype: str = "bf16") -> OpTime:
    """Seconds for `op` on `nodes` nodes of one chip (default: all of them), with a breakdown.

    An `OpCost` of kind "matrix" is mapped as the `equivalent_shape` matmul (its FLOP kept
    exact); kind "vector" as an elementwise op reading `READ_SHARE` of its bytes.
    """
    fig = _figures(spec)
    if isinstance(op, OpCost):
        if op.kind == "matrix" and op.flops > 0:
            shape = equivalent_shape(op.flops, op.bytes, dtype)
            mm = map_matmul(shape.m, shape.n, shape.k, dtype, nodes, fig)
            scale = op.flops / mm.flops
            return _from_mapping(mm, scale)
        return _from_streamed(map_vector(op.bytes * READ_SHARE, op.bytes * (1 - READ_SHARE),
                                         op.flops, nodes, fig, name=op.target), "vector")
    if isinstance(op, MatmulShape):
        return _from_mapping(map_matmul(op.m, op.n, op.k, dtype, nodes, fig, batch=op.batch), 1.0)
    if isinstance(op, RowwiseShape):
        return _from_streamed(map_rowwise(op, dtype, nodes, fig), "vector")
    if isinstance(op, AttentionShape):
        return _from_streamed(map_attention(op, dtype, nodes, fig), "attention")
    raise DojoError(f"d1_op_time: cannot time a {type(op).__name__}")


def _parts(op: Mapping | StreamedOp, names: tuple[str, ...],
           scale: float = 1.0) -> tuple[tuple[str, float], ...]:
    return tuple((name, getattr(op, f"{name}_s") * scale) for name in names)


def _from_mapping(mm: Mapping, scale: float) -> OpTime:
    return OpTime(time_s=mm.time_s * scale, kind="matrix", bound=mm.bound, mode=mm.mode,
                  nodes=mm.nodes, parts=_parts(mm, (*COMPONENTS, "fill", "drain"), scale),
                  mapping=mm)


def _from_streamed(op: StreamedOp, kind: str) -> OpTime:
    return OpTime(time_s=op.time_s, kind=kind, bound=op.bound, mode=op.mode, nodes=op.nodes,
                  parts=_parts(op, (*COMPONENTS, "fill")), mapping=op)
