"""Vector, row-wise and attention ops, and the simulator's entry point `d1_op_time`."""

from __future__ import annotations

import pytest

from dojo.compiler.d1 import (
    AttentionShape,
    MatmulShape,
    RowwiseShape,
    d1_op_time,
    map_matmul,
    map_vector,
)
from dojo.compiler.d1.ops import equivalent_shape
from dojo.compiler.work import OpCost
from dojo.errors import DojoError
from dojo.hardware import load_system

NODES = 354
SIMD = 64e9  # FP32 per node
LOAD_BW, STORE_BW = 400e9, 270e9
D1_PEAK = 354 * 512 * 2.0e9


@pytest.fixture(scope="module")
def v1():  # type: ignore[no-untyped-def]
    return load_system("v1")


def test_vector_in_sram_is_bound_by_ports_or_simd(v1) -> None:  # type: ignore[no-untyped-def]
    r = map_vector(2e7, 1e7, 1e7, None, v1)
    assert r.mode == "sram"
    assert r.time_s == pytest.approx(max(2e7 / (NODES * LOAD_BW), 1e7 / (NODES * STORE_BW),
                                         1e7 / (NODES * SIMD)))


def test_vector_beyond_sram_streams(v1) -> None:  # type: ignore[no-untyped-def]
    r = map_vector(1e9, 5e8, 0, None, v1)
    assert r.mode == "stream"
    assert r.time_s >= 1.5e9 / (20 * 800e9 / 150)


def test_softmax_flops_run_on_the_simd(v1) -> None:  # type: ignore[no-untyped-def]
    t = d1_op_time(RowwiseShape(8192, 4096, flops_per_element=20.0), v1)
    assert t.time_s >= 20.0 * 8192 * 4096 / (NODES * SIMD)
    assert t.bound == "simd"


def test_attention_never_beats_peak_and_causal_halves(v1) -> None:  # type: ignore[no-untyped-def]
    full = d1_op_time(AttentionShape(96, 2048, 2048, 64), v1)
    causal = d1_op_time(AttentionShape(96, 2048, 2048, 64, causal=True), v1)
    flops = 4 * 96 * 2048 * 2048 * 64
    assert full.time_s >= flops / D1_PEAK
    assert full.time_s <= 2 * flops / D1_PEAK
    assert causal.time_s == pytest.approx(full.time_s / 2, rel=0.05)


def test_equivalent_shape_keeps_flops_and_bytes() -> None:
    flops, nbytes = 2 * 8192 * 3072 * 768, (8192 * 768 + 768 * 3072 + 8192 * 3072) * 2
    s = equivalent_shape(flops, nbytes, "bf16")
    assert 2 * s.m * s.n * s.k == pytest.approx(flops, rel=0.01)
    assert (2 * s.m * s.k + s.m * s.n) * 2 == pytest.approx(nbytes, rel=0.01)


def test_op_cost_matrix_goes_through_the_matmul_mapper(v1) -> None:  # type: ignore[no-untyped-def]
    flops = 2.0 * 4096**3
    t = d1_op_time(OpCost("matrix", flops, 3 * 4096 * 4096 * 2, "aten.mm"), v1)
    direct = map_matmul(4096, 4096, 4096, "bf16", None, v1)
    assert t.time_s == pytest.approx(direct.time_s, rel=0.02)
    assert flops / D1_PEAK <= t.time_s
    assert dict(t.parts)["compute"] >= flops / D1_PEAK * 0.99


def test_op_cost_vector_and_shapes(v1) -> None:  # type: ignore[no-untyped-def]
    t = d1_op_time(OpCost("vector", 0.0, 3e7, "aten.add"), v1, nodes=100)
    assert t.time_s == pytest.approx(max(2e7 / (100 * LOAD_BW), 1e7 / (100 * STORE_BW)))
    m = d1_op_time(MatmulShape(256, 256, 256), v1, nodes=1)
    assert m.time_s == pytest.approx(2 * 256**3 / (512 * 2e9))


def test_bad_input(v1) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DojoError, match="nodes = 0"):
        map_vector(1, 1, 1, 0, v1)
    with pytest.raises(DojoError, match="cannot time"):
        d1_op_time("mm", v1)  # type: ignore[arg-type]
    with pytest.raises(DojoError, match="D1 mapper needs a Dojo system"):
        d1_op_time(MatmulShape(8, 8, 8), load_system("h100-cluster"))
