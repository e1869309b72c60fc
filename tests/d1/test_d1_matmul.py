"""D1 matmul mapping against closed forms written from the published node figures."""

from __future__ import annotations

import itertools
import time

import pytest

from dojo.compiler.d1 import chip_figures, map_matmul
from dojo.errors import DojoError
from dojo.hardware import load_system

# Published figures (Hot Chips 34, docs: shared/dojo-hardware.md), independent of the code.
CLOCK = 2.0e9
FLOP_PER_CYCLE = 512
SRAM = 1.25e6
LOAD_BW, STORE_BW = 400e9, 270e9
D1_PEAK = 354 * FLOP_PER_CYCLE * CLOCK  # 362 TFLOPS
HBM_PER_DIP = 800e9


@pytest.fixture(scope="module")
def v1():  # type: ignore[no-untyped-def]
    return load_system("v1")


def one_node(m: int, n: int, k: int, d: int = 2) -> float:
    """max(compute, loads, stores) for a matmul resident in one node's SRAM."""
    return max(2 * m * n * k / (FLOP_PER_CYCLE * CLOCK), (m * k + k * n) * d / LOAD_BW,
               m * n * d / STORE_BW)


def test_one_node_compute_bound_matches_peak(v1) -> None:  # type: ignore[no-untyped-def]
    mp = map_matmul(256, 256, 256, "bf16", 1, v1)
    assert mp.mode == "sram" and mp.nodes == 1
    assert mp.time_s == pytest.approx(2 * 256**3 / (FLOP_PER_CYCLE * CLOCK))
    assert mp.time_s == pytest.approx(one_node(256, 256, 256))
    assert mp.bound == "compute"


def test_one_node_store_bound_when_k_is_tiny(v1) -> None:  # type: ignore[no-untyped-def]
    # k = 2: 1 MFLOP of work but 0.5 MB of output through a 270 GB/s store port.
    mp = map_matmul(512, 512, 2, "bf16", 1, v1)
    assert mp.time_s == pytest.approx(512 * 512 * 2 / STORE_BW)
    assert mp.time_s == pytest.approx(one_node(512, 512, 2))
    assert mp.bound == "sram_write"


@pytest.mark.parametrize("shape", [(128, 64, 300), (300, 200, 100), (64, 640, 32)])
def test_one_node_matches_closed_form(v1, shape) -> None:  # type: ignore[no-untyped-def]
    m, n, k = shape
    assert (m * k + k * n + m * n) * 2 <= SRAM  # the closed form's premise: it fits
    assert map_matmul(m, n, k, "bf16", 1, v1).time_s == pytest.approx(one_node(m, n, k))


def test_tiles_fit_sram_with_double_buffering(v1) -> None:  # type: ignore[no-untyped-def]
    mp = map_matmul(4096, 4096, 4096, "bf16", None, v1)
    buffers = 2 * (mp.m_t + mp.n_t) * mp.k_t * 2
    resident = 3 * 4096 * 4096 * 2 / (mp.rows * mp.cols)
    assert mp.mode == "sram"
    assert resident + buffers + 4 * mp.m_t * mp.n_t <= SRAM
    assert mp.rows <= 18 and mp.cols <= 20


def test_larger_than_sram_streams_from_hbm(v1) -> None:  # type: ignore[no-untyped-def]
    m = n = k = 8192  # 3 x 134 MB in BF16 does not fit one node's... nor 16 nodes' 20 MB
    mp = map_matmul(m, n, k, "bf16", 16, v1)
    operands = (m * k + k * n + m * n) * 2
    assert operands > 16 * SRAM and mp.mode == "stream"
    # Every operand byte crosses the chip's share of the 20 DIPs at least once.
    share = 20 * HBM_PER_DIP / 150
    assert mp.hbm_bytes >= operands
    assert mp.time_s >= operands / share


def test_no_dips_and_too_big_is_an_error() -> None:
    with pytest.raises(DojoError, match="no DIP HBM"):
        map_matmul(16384, 16384, 16384, "bf16", None, load_system("d1"))


def test_large_square_matmul_reaches_80_percent_of_362_tflops(v1) -> None:  # type: ignore[no-untyped-def]
    n = 16384
    mp = map_matmul(n, n, n, "bf16", None, v1)
    assert pytest.approx(362.5e12, rel=1e-3) == D1_PEAK
    assert 2 * n**3 / mp.time_s >= 0.8 * D1_PEAK
    assert 2 * n**3 / mp.time_s <= D1_PEAK  # never above peak


def test_sram_resident_matmul_on_a_chip_is_near_peak(v1) -> None:  # type: ignore[no-untyped-def]
    mp = map_matmul(4096, 4096, 4096, "bf16", None, v1)
    assert 0.8 * D1_PEAK <= mp.flops_per_s <= D1_PEAK


@pytest.mark.parametrize("shape", [(4096, 4096, 4096), (16384, 16384, 16384),
                                   (64, 64, 1 << 20)])
def test_more_nodes_never_slower(v1, shape) -> None:  # type: ignore[no-untyped-def]
    fig = chip_figures(v1)
    m, n, k = shape
    times = [map_matmul(m, n, k, "bf16", nodes, fig).time_s
             for nodes in (1, 2, 4, 9, 16, 50, 100, 200, 300, 354)]
    assert all(b <= a for a, b in itertools.pairwise(times))
    assert times[-1] < times[0] / 100


def test_k_split_reduces_a_narrow_output(v1) -> None:  # type: ignore[no-untyped-def]
    # A 64 x 64 output cannot keep 354 nodes busy without splitting k (partial-sum reduction).
    mp = map_matmul(64, 64, 1 << 20, "bf16", None, v1)
    assert mp.k_split > 1
    assert mp.flops_per_s >= 0.8 * D1_PEAK


def test_mapping_is_fast(v1) -> None:  # type: ignore[no-untyped-def]
    fig = chip_figures(v1)
    start = time.perf_counter()
    for i in range(5):
        map_matmul(3000 + i, 2048, 1024, "bf16", None, fig)
    assert (time.perf_counter() - start) / 5 < 0.05  # a few ms each; loose for a shared CPU


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_shape_is_rejected(v1, bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DojoError, match="matmul m"):
        map_matmul(bad, 8, 8, "bf16", None, v1)


def test_bad_nodes_and_dtype_are_rejected(v1) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DojoError, match="nodes = 400"):
        map_matmul(8, 8, 8, "bf16", 400, v1)
    with pytest.raises(DojoError, match="19 x 3"):
        map_matmul(8, 8, 8, "bf16", (19, 3), v1)
    with pytest.raises(DojoError, match="dtype 'int4'"):
        map_matmul(8, 8, 8, "int4", None, v1)
