"""Collective algorithms against their closed forms, and groups mapped onto the hierarchy."""

from __future__ import annotations

import pytest

from dojo.compiler.mapping import GroupLevel, group_levels
from dojo.hardware import load_system
from dojo.sim.collectives import collective_time


def _level(n: int, bw: float, lat: float = 0.0, topo: str = "switch") -> GroupLevel:
    return GroupLevel("x", "link", n, bw, lat, topo)


def test_ring_all_reduce_closed_form() -> None:
    n, s, bw = 8, 1e9, 100e9
    t, algo = collective_time("all_reduce", s, (_level(n, bw),), 1.0, 0.0)
    assert algo in ("ring", "tree")
    assert t == pytest.approx(2 * (n - 1) / n * s / bw)
    rs, _ = collective_time("reduce_scatter", s, (_level(n, bw),), 1.0, 0.0)
    assert rs == pytest.approx((n - 1) / n * s / bw)


def test_latency_bound_small_messages_prefer_tree() -> None:
    t, algo = collective_time("all_reduce", 8.0, (_level(64, 25e9, 5e-6),), 1.0, 0.0)
    assert algo == "tree"
    assert t == pytest.approx(2 * 6 * 5e-6 + 2 * 8.0 / 25e9)


def test_hierarchical_moves_less_over_the_slow_level() -> None:
    inner, outer = _level(8, 300e9), _level(16, 25e9)
    s = 4e9
    t, algo = collective_time("all_reduce", s, (inner, outer), 1.0, 0.0)
    expect = 2 * (7 / 8 * s / 300e9 + 15 / 16 * (s / 8) / 25e9)
    assert algo == "hierarchical" and t == pytest.approx(expect)
    flat = 2 * (128 - 1) / 128 * s / 25e9
    assert t < flat


def test_gpu_groups_map_to_nvlink_then_infiniband() -> None:
    spec = load_system("a100-cluster:64")
    (tp,) = group_levels(spec, 8, 1)
    assert (tp.level, tp.members, tp.bytes_per_s) == ("server", 8, 300e9)
    (dp,) = group_levels(spec, 8, 8)
    # 8 GPUs of a server share its 8 HDR ports: 25 GB/s each.
    assert (dp.level, dp.members, dp.bytes_per_s) == ("cluster", 8, 25e9)
    both = group_levels(spec, 16, 4)
    assert [(g.level, g.members) for g in both] == [("server", 2), ("cluster", 8)]


def test_dojo_groups_share_tile_edges() -> None:
    spec = load_system("v1")
    (tile,) = group_levels(spec, 25, 1)
    assert (tile.level, tile.bytes_per_s) == ("tile", 4e12)
    (tray,) = group_levels(spec, 6, 25)
    # All 25 chips of a tile cross the 9 TB/s tile edge at once.
    assert tray.bytes_per_s == pytest.approx(9e12 / 25)


def test_mesh2d_uses_rows_then_columns() -> None:
    lv = GroupLevel("tile", "d1-edge", 25, 4e12, 0.0, "mesh2d")
    t, algo = collective_time("all_reduce", 1e9, (lv,), 1.0, 0.0)
    expect = 2 * (4 / 5 * 1e9 / 4e12 + 4 / 5 * 0.2e9 / 4e12)
    assert algo == "mesh2d" and t == pytest.approx(expect)


def test_zplane_alternative_for_groups_that_leave_a_tile() -> None:
    from dojo.compiler.mapping import zplane_levels

    pod = load_system("exapod")
    levels = group_levels(pod, 120, 25)  # one chip per tile, every tile
    alt = zplane_levels(pod, levels)
    (z,) = alt
    assert z.level == "zplane" and z.members == 120
    # 400 DIPs over 120 tiles at 50 GB/s TTPoE, shared by the 25 chips of a tile.
    assert z.bytes_per_s == pytest.approx(400 / 120 * 50e9 / 25)
    assert zplane_levels(pod, group_levels(pod, 25, 1)) == ()       # stays in its tile
    assert zplane_levels(load_system("a100-cluster:64"), levels) == ()  # GPUs have no Z-plane


def test_wave_quantisation_closed_form() -> None:
    """An A100 has 108 SMs; a 256 x 128-tiled GEMM with 109 tiles needs two waves."""
    from dojo.sim.costs import DeviceModel, load_calibration

    dev = DeviceModel(peak_flops=312e12, vector_flops=19.5e12, mem_bytes_per_s=2e12,
                      calibration=load_calibration("a100"), compute_units=108)
    assert dev.wave_efficiency((1, 256 * 108, 128)) == pytest.approx(1.0)
    assert dev.wave_efficiency((1, 256 * 109, 128)) == pytest.approx(109 / 216)
    assert dev.wave_efficiency((2, 300, 129)) == pytest.approx(8 / 108)  # 2 x 2 x 2 tiles
    assert dev.wave_efficiency((0, 0, 0)) == 1.0
