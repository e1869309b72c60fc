"""Matmul on a rectangle of D1 nodes: a SUMMA-style 2D decomposition searched for the fastest.

Decomposition (docs/d1.md has the full derivation). The output C[m, n] is split over an
`out_rows x out_cols` grid of nodes; the reduction dimension k may further be split `k_split`
ways, the members of one split sitting side by side in a row (so the partial-sum reduce-scatter
runs between neighbours). A rectangle `out_rows x (out_cols * k_split)` of nodes is used. Each
node owns an output block and walks it in `passes` output tiles of `m_t x n_t` (FP32
accumulators), each over its k range in steps of `k_t`, with the next A and B panels
(`m_t x k_t`, `k_t x n_t`) arriving in a second buffer while the matrix unit works (double
buffering). A panels are broadcast along rows, B panels along columns (pipelined through the
routers, no wraparound); the k-split partial sums are reduce-scattered along rows at the end of
each pass. Batched matmuls are spread over `groups` sub-rectangles.

Operands live in the rectangle's SRAM ("sram" mode: A, B and C spread evenly over its nodes) when
they fit with the working set; otherwise ("stream" mode) they stream from DIP HBM: each pass
reads the A rows and B columns of the rectangle's output super-tile and writes C back.

Time: the matrix unit, the SIMD unit, the SRAM load and store ports, the row and column mesh
links and the HBM stream all work at once, so the steady state is the largest of their totals;
to that come the fill (first panel over the mesh or from HBM, plus the hop latency across the
rectangle) and the drain (the last pass's reduction and write-back).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from dojo.compiler.d1.figures import ACC_BYTES, ChipFigures, chip_figures, dtype_bytes
from dojo.errors import DojoError
from dojo.hardware.spec import SystemSpec

# Fractions of the free SRAM given to the accumulator tile in the search (the rest double-buffers
# panels); the "whole block in one pass" option is always tried as well.
_AREA_FRACTIONS = (0.85, 0.7, 0.55, 0.4, 0.25, 0.1)
_K_SPLITS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32)
COMPONENTS = ("compute", "simd", "sram_read", "sram_write", "mesh", "hbm")


def pacing_component(timing: object) -> str:
    """The steady-state component (of COMPONENTS, as `<name>_s` fields) that sets the pace."""
    return max(COMPONENTS, key=lambda c: float(getattr(timing, f"{c}_s")))


@dataclass(frozen=True)
class Mapping:
    """The chosen decomposition of one (batched) matmul and its time. Seconds, bytes, FLOP.

    `*_s` fields are the steady-state totals of each pipelined component; `time_s` is the
    largest of them plus `fill_s` and `drain_s`. Byte figures are per node (SRAM), per busiest
    link (mesh) and per chip (HBM).
    """

    m: int
    n: int
    k: int
    batch: int
    dtype: str
    mode: str
    groups: int
    out_rows: int
    out_cols: int
    k_split: int
    m_t: int
    n_t: int
    k_t: int
    passes: int
    flops: float
    compute_s: float
    simd_s: float
    sram_read_s: float
    sram_write_s: float
    mesh_s: float
    hbm_s: float
    fill_s: float
    drain_s: float
    time_s: float
    sram_bytes_per_node: float
    hbm_bytes: float
    mesh_bytes_per_link: float

    @property
    def rows(self) -> int:
        return self.out_rows

    @property
    def cols(self) -> int:
        return self.out_cols * self.k_split

    @property
    def nodes(self) -> int:
        """Nodes busy: `groups` rectangles of `rows x cols`."""
        return self.groups * self.rows * self.cols

    @property
    def bound(self) -> str:
        """The steady-state component that sets the pace."""
        return pacing_component(self)

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.time_s if self.time_s else 0.0


@functools.lru_cache(maxsize=64)
def _candidates(rows: int, cols: int, nodes: int, batch: int) -> tuple[np.ndarray, ...]:
    """Every (groups, out_rows, out_cols, k_split) that fits `nodes` in a rows x cols grid, once
    per tile option (`frac`: NaN for the whole block, else the accumulator's share of SRAM)."""
    out: list[tuple[float, ...]] = []
    groups = sorted({1, min(batch, nodes), *(2**i for i in range(1, 20)
                                             if 2**i <= min(batch, nodes))})
    for g in groups:
        per = nodes // g
        for s in _K_SPLITS if g == 1 else _K_SPLITS[:3]:  # batches rarely need split-k
            for pr in range(1, rows + 1):
                for pc in range(1, cols // s + 1):
                    if pr * pc * s <= per:
                        out.extend((g, pr, pc, s, f) for f in (math.nan, *_AREA_FRACTIONS))
    arr = np.array(out, dtype=np.float64).T
    arr.setflags(write=False)
    return tuple(arr)


def _tiles(mb: np.ndarray, nb: np.ndarray, budget: np.ndarray, frac: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Output tile m_t x n_t and passes: the whole block (frac NaN), or a near-square tile of a
    share of the free SRAM, balanced so the passes split the block evenly."""
    area = np.maximum(np.nan_to_num(frac) * budget / ACC_BYTES, 1.0)
    mt0 = np.clip(np.floor(np.sqrt(area)), 1, mb)
    nt0 = np.clip(np.floor(area / mt0), 1, nb)
    pm, pn = np.ceil(mb / mt0), np.ceil(nb / nt0)
    whole = np.isnan(frac)
    return (np.where(whole, mb, np.ceil(mb / pm)), np.where(whole, nb, np.ceil(nb / pn)),
            np.where(whole, 1.0, pm * pn))


def _evaluate(c: tuple[np.ndarray, ...], shape: tuple[int, int, int, int], dtype: str,
              fig: ChipFigures, stream: bool) -> dict[str, np.ndarray]:
    """Times and sizes of every candidate `c` in one mode (vectorised)."""
    g, pr, pc, s, frac = c
    m, n, k, batch = shape
    d = dout = float(dtype_bytes(dtype))
    reps = np.ceil(batch / g)
    p = pr * pc * s
    mb, nb, ks = np.ceil(m / pr), np.ceil(n / pc), np.ceil(k / s)
    resident = np.zeros_like(p) if stream else reps * (m * k + k * n + m * n) * d / p
    budget = fig.sram_bytes - resident
    mt, nt, passes = _tiles(mb, nb, budget, frac)
    single = (p == 1) & (not stream)
    kt_fit = np.floor((budget - ACC_BYTES * mt * nt) / (2 * (mt + nt) * d))
    kt = np.where(single, ks, np.minimum(ks, kt_fit))
    steps = np.ceil(ks / np.maximum(kt, 1))
    acc = np.where((steps > 1) | (s > 1), ACC_BYTES * mt * nt, dout * mt * nt if stream else 0.0)
    footprint = resident + acc + np.where(single, 0.0, 2 * (mt + nt) * kt * d)
    ok = (kt >= 1) & (footprint <= fig.sram_bytes)
    if stream:
        ok &= fig.stream_bytes_per_s > 0
    r = reps * passes
    tile_acc = ACC_BYTES * mt * nt
    red = (s - 1) / s
    f_pc = np.ones_like(pc) if stream else (pc - 1) / pc
    f_pr = np.ones_like(pr) if stream else (pr - 1) / pr
    send = 0.0 if stream else (mt * ks / pc * (pc > 1) + nt * ks / pr * (pr > 1)) * d
    reads = r * ((mt + nt) * ks * d + tile_acc * (steps - 1) + send + 2 * tile_acc * red
                 + (dout * mt * nt / s if stream else 0.0))
    last = np.where(s > 1, tile_acc + dout * mt * nt / s, dout * mt * nt)
    recv = (mt * ks * f_pc + nt * ks * f_pr) * d
    writes = r * (recv + tile_acc * (steps - 1) + last + tile_acc * red)
    row_link = r * (mt * k * d * f_pc + tile_acc * red)
    col_link = r * nt * ks * d * f_pr
    hbm = g * r * ((pr * mt + pc * nt) * k * d + pr * pc * mt * nt * dout) if stream else 0 * p
    rate = fig.matrix_rate(dtype)
    simd = fig.simd_flops_per_s or math.inf
    link = fig.link_bytes_per_s
    sbw = fig.stream_bytes_per_s or math.inf
    out = {
        "compute": r * 2 * mt * nt * ks / rate,
        "simd": r * red * mt * nt / simd,
        "sram_read": reads / fig.sram_read_bytes_per_s,
        "sram_write": writes / fig.sram_write_bytes_per_s,
        "mesh": np.maximum(row_link, col_link) / link,
        "hbm": hbm / sbw,
    }
    hops = (pr - 1) + (pc * s - 1)
    fill = hops * fig.hop_latency_s + np.where(p > 1, (mt + nt) * kt * d / link, 0.0)
    drain = np.where(s > 1, red * tile_acc / link + (s - 1) * np.minimum(2, s - 1)
                     * fig.hop_latency_s + red * mt * nt / simd, 0.0)
    drain_hbm = 0.0 * p
    if stream:
        fill = fill + fig.stream_latency_s + (pr * mt + pc * nt) * kt * d / sbw
        drain_hbm = fig.stream_latency_s + g * pr * pc * mt * nt * dout / sbw
    # The HBM total already holds the last write-back: the drain adds to the other components,
    # and to the HBM stream only the reduction that must precede that write-back.
    core = np.maximum.reduce([out[name] for name in COMPONENTS if name != "hbm"])
    time = fill + np.maximum(core + drain + drain_hbm, out["hbm"] + drain)
    out.update(fill=fill, drain=drain + drain_hbm, time=np.where(ok, time, np.inf),
               mt=mt, nt=nt, kt=kt, passes=passes, footprint=footprint, hbm_bytes=hbm,
               link_bytes=np.maximum(row_link, col_link))
    return out


def _rect(nodes: int | tuple[int, int] | None, fig: ChipFigures) -> tuple[int, int, int]:
    rows, cols = fig.grid
    if nodes is None:
        return rows, cols, fig.nodes
    if isinstance(nodes, tuple):
        r, c = nodes
        if not (1 <= r <= rows and 1 <= c <= cols):
            raise DojoError(f"node rectangle {r} x {c}: expected at most the chip's "
                            f"{rows} x {cols} grid")
        return r, c, r * c
    if not 1 <= nodes <= fig.nodes:
        raise DojoError(f"nodes = {nodes}: expected 1..{fig.nodes} (nodes of one chip)")
    return rows, cols, nodes


def map_matmul(m: int, n: int, k: int, dtype: str, nodes_rect: int | tuple[int, int] | None,
               spec: SystemSpec | ChipFigures, batch: int = 1) -> Mapping:
    """Map `batch` matmuls C[m, n] = A[m, k] @ B[k, n] in `dtype` onto one chip's nodes.

    `nodes_rect` is a node count (any rectangle inside the chip grid holding at most that many
    nodes may be used), an explicit (rows, cols) rectangle, or None for the whole chip. Raises
    `DojoError` when no decomposition fits SRAM and the system has no DIP HBM to stream from.
    """
    for name, value in (("m", m), ("n", n), ("k", k), ("batch", batch)):
        if not isinstance(value, int) or value < 1:
            raise DojoError(f"matmul {name} = {value!r}: expected a positive integer")
    fig = spec if isinstance(spec, ChipFigures) else chip_figures(spec)
    dtype_bytes(dtype)
    fig.matrix_rate(dtype)
    return _map(m, n, k, batch, dtype, _rect(nodes_rect, fig), fig)


@functools.lru_cache(maxsize=4096)
def _map(m: int, n: int, k: int, batch: int, dtype: str, rect: tuple[int, int, int],
         fig: ChipFigures) -> Mapping:
    cands = _candidates(*rect, batch)
    best: tuple[float, dict[str, np.ndarray], int, str] | None = None
    for stream in (False, True):
        res = _evaluate(cands, (m, n, k, batch), dtype, fig, stream)
        i = int(np.argmin(res["time"]))
        t = float(res["time"][i])
        if math.isfinite(t) and (best is None or t < best[0]):
            best = (t, res, i, "stream" if stream else "sram")
    if best is None:
        need = batch * (m * k + k * n + m * n) * dtype_bytes(dtype)
        raise DojoError(f"matmul {batch} x ({m} x {k}) @ ({k} x {n}) {dtype}: operands need "
                        f"{need:.3g} bytes; {rect[2]} nodes hold "
                        f"{rect[2] * fig.sram_bytes:.3g} bytes of SRAM and {fig.system} has no "
                        "DIP HBM to stream from")
    _, res, i, mode = best
    g, pr, pc, s = (int(a[i]) for a in cands[:4])
    return Mapping(
        m=m, n=n, k=k, batch=batch, dtype=dtype, mode=mode, groups=g, out_rows=pr,
        out_cols=pc, k_split=s, m_t=int(res["mt"][i]), n_t=int(res["nt"][i]),
        k_t=int(res["kt"][i]), passes=int(res["passes"][i]), flops=2.0 * m * n * k * batch,
        compute_s=float(res["compute"][i]), simd_s=float(res["simd"][i]),
        sram_read_s=float(res["sram_read"][i]), sram_write_s=float(res["sram_write"][i]),
        mesh_s=float(res["mesh"][i]), hbm_s=float(res["hbm"][i]),
        fill_s=float(res["fill"][i]), drain_s=float(res["drain"][i]),
        time_s=float(res["time"][i]), sram_bytes_per_node=float(res["footprint"][i]),
        hbm_bytes=float(res["hbm_bytes"][i]), mesh_bytes_per_link=float(res["link_bytes"][i]))
