"""Dojo collectives against the ring closed form; Z-plane and host input against link figures."""

from __future__ import annotations

import pytest

from dojo.compiler.d1 import (
    best_collective,
    cross_tile_collective,
    host_input_time,
    tile_collective,
    zplane_collective,
)
from dojo.errors import DojoError
from dojo.hardware import load_system

D1_EDGE = 4e12       # chip-to-chip inside a tile, per direction
D1_EDGE_LAT = 20e-9  # the tile file's assumed per-hop latency
TILE_EDGE = 9e12


def ring(passes: int, p: int, nbytes: float, bw: float, step: float) -> float:
    return passes * (p - 1) * (step + nbytes / (p * bw))


@pytest.mark.parametrize("nbytes", [1e3, 1e6, 1e9])
def test_all_reduce_over_a_5x5_tile_matches_the_ring_closed_form(nbytes: float) -> None:
    got = tile_collective("all_reduce", nbytes, load_system("tile")).time_s
    step = 2 * D1_EDGE_LAT  # folded ring on a line without wraparound: 2 hops a step
    want = ring(2, 5, nbytes, D1_EDGE, step) + ring(2, 5, nbytes / 5, D1_EDGE, step)
    assert got == pytest.approx(want)


def test_reduce_scatter_is_half_an_all_reduce() -> None:
    tile = load_system("tile")
    ar = tile_collective("all_reduce", 1e8, tile, (2, 3)).time_s
    rs = tile_collective("reduce_scatter", 1e8, tile, (2, 3)).time_s
    ag = tile_collective("all_gather", 1e8, tile, (2, 3)).time_s
    assert rs == pytest.approx(ar / 2) and ag == pytest.approx(rs)


def test_large_all_reduce_approaches_twice_the_buffer_over_link() -> None:
    t = tile_collective("all_reduce", 1e10, load_system("tile")).time_s
    assert 2 * 0.8 * 1e10 / D1_EDGE < t < 2 * 1.2 * 1e10 / D1_EDGE


def test_cross_tile_uses_the_chip_share_of_tile_edges() -> None:
    v1 = load_system("v1")
    c = cross_tile_collective("all_reduce", 1e9, v1, (1, 3))
    outer = [p for p in c.phases if p.level.startswith("tiles")]
    assert len(outer) == 1 and outer[0].members == 3
    assert outer[0].bytes_per_s == pytest.approx(TILE_EDGE / 5)  # 5 chips along a tile edge
    assert outer[0].nbytes == pytest.approx(1e9 / 25)


def test_zplane_ring_at_ttpoe_bandwidth() -> None:
    v1 = load_system("v1")
    z = zplane_collective("all_reduce", 1e9, v1, 6)
    outer = next(p for p in z.phases if p.level == "zplane")
    assert outer.bytes_per_s == pytest.approx(20 / 6 * 50e9)  # 20 DIPs x 50 GB/s over 6 tiles
    assert z.time_s >= 2 * 5 / 6 * 1e9 / outer.bytes_per_s


def test_best_picks_the_fastest() -> None:
    v1 = load_system("v1")
    best = best_collective("all_reduce", 1e9, v1, 150)
    options = [cross_tile_collective("all_reduce", 1e9, v1, (2, 3)),
               zplane_collective("all_reduce", 1e9, v1, 6)]
    assert best.time_s == pytest.approx(min(o.time_s for o in options))
    assert best.via == "mesh"  # 9 TB/s tile edges beat 50 GB/s Ethernet inside one tray


def test_exapod_beyond_a_tray_goes_over_the_zplane() -> None:
    assert best_collective("all_reduce", 1e6, load_system("exapod"), 300).via == "zplane"


def test_host_input_is_pcie_bound_in_v1() -> None:
    v1 = load_system("v1")
    h = host_input_time(1.7e9, v1)  # one driving-video sample
    assert h.pcie_s == pytest.approx(1.7e9 / (20 * 32e9))
    assert h.ttp_s == pytest.approx(1.7e9 / (20 * 900e9))
    assert h.time_s >= h.pcie_s and max(h.pcie_s, h.ttp_s, h.mesh_s) == h.pcie_s


def test_bad_input() -> None:
    tile = load_system("tile")
    with pytest.raises(DojoError, match="expected one of"):
        tile_collective("broadcast", 1.0, tile)
    with pytest.raises(DojoError, match="6 x 1"):
        tile_collective("all_reduce", 1.0, tile, (6, 1))
    with pytest.raises(DojoError, match="no DIPs"):
        zplane_collective("all_reduce", 1.0, tile, 1)
    with pytest.raises(DojoError, match="no DIPs"):
        host_input_time(1.0, tile)
