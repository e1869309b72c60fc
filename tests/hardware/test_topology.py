"""Routes against closed forms: Manhattan distances on the mesh, lane shares of shared edges."""

from __future__ import annotations

import resource

import pytest

from dojo.errors import DojoError
from dojo.hardware import Topology, load_system


@pytest.fixture(scope="module")
def v1() -> Topology:
    return Topology(load_system("v1"))


def test_same_chip_route_is_manhattan_on_mesh_links(v1: Topology) -> None:
    r = v1.route("tile[0,0]/chip[1,1]/node[2,3]", "tile[0,0]/chip[1,1]/node[7,11]", via="mesh")
    assert r.hops == (7 - 2) + (11 - 3)
    assert set(r.links) == {"mesh"}
    assert r.bottleneck_bytes_per_s == 512e9
    assert r.latency_s == pytest.approx(13 * 1e-9)


def test_node_route_across_tiles_counts_each_boundary(v1: Topology) -> None:
    a, b = "tile[0,0]/chip[0,0]/node[0,0]", "tile[0,1]/chip[0,0]/node[0,0]"
    r = v1.route(a, b, via="mesh")
    # One tile = 5 chips x 20 node columns: 100 column hops, of which 1 crosses the tile edge,
    # 4 cross D1 edges inside the tile and 95 are on-chip mesh links.
    by_link = {(s.link, s.level): s.hops for s in r.segments}
    assert r.hops == 100
    assert by_link == {("tile-edge", "tray"): 1, ("d1-edge", "tile"): 4, ("mesh", "chip"): 95}
    # A node-wide flow gets its share of the 9 TB/s tile edge: 5 chips x 18 node rows = 90 lanes.
    assert r.bottleneck_bytes_per_s == pytest.approx(9e12 / 90)


def test_chip_granularity_route(v1: Topology) -> None:
    r = v1.route("tile[0,0]/chip[0,0]", "tile[0,0]/chip[3,2]", via="mesh")
    assert r.hops == 5 and set(r.links) == {"d1-edge"}
    assert r.bottleneck_bytes_per_s == 4e12  # one whole D1 edge
    across = v1.route("tile[0,0]/chip[2,4]", "tile[0,1]/chip[2,0]", via="mesh")
    assert across.hops == 1 and across.bottleneck_bytes_per_s == pytest.approx(9e12 / 5)


def test_zplane_beats_long_mesh_routes_for_small_messages() -> None:
    pod = Topology(load_system("exapod"))
    a = "cabinet[0]/tray[0]/tile[0,0]/chip[2,2]/node[9,10]"
    b = "cabinet[9]/tray[1]/tile[1,2]/chip[2,2]/node[9,10]"
    mesh = pod.route(a, b, via="mesh")
    zplane = pod.route(a, b, via="zplane")
    assert "ttpoe" in zplane.links and "ttp" in zplane.links
    assert zplane.bottleneck_bytes_per_s == 50e9  # TTPoE
    assert zplane.hops < mesh.hops
    assert pod.route(a, b, nbytes=0).via == "zplane"  # latency-bound: the shortcut wins
    # Bandwidth-bound, node-wide flows: mesh lanes are slower than TTPoE across cabinets here,
    # so auto keeps whichever moves 1 GB faster by the closed form latency + bytes / bottleneck.
    big = pod.route(a, b, nbytes=1e9)
    best = min((mesh, zplane), key=lambda r: r.latency_s + 1e9 / r.bottleneck_bytes_per_s)
    assert big.via == best.via


def test_dip_and_host_attachments(v1: Topology) -> None:
    r = v1.route("host[0]", "dip[2]")
    assert r.links == ("pcie4x16",) and r.bottleneck_bytes_per_s == 32e9
    r = v1.route("dip[0]", "dip[19]")
    assert r.links == ("ttpoe",) and r.hops == 2
    r = v1.route("host[0]", "tile[0,0]")
    assert r.links[:2] == ("pcie4x16", "ttp") and r.bottleneck_bytes_per_s == 32e9
    # DIPs sit on tile edges: the middle tiles (column 1) are one tile hop away from any DIP.
    mid = v1.route("dip[0]", "tile[0,1]")
    assert "tile-edge" in mid.links and mid.hops == 2


def test_gpu_routes_nvlink_then_infiniband() -> None:
    t = Topology(load_system("a100-cluster:1024"))
    inside = t.route("server[0]/gpu[0]", "server[0]/gpu[7]")
    assert inside.links == ("nvlink3",) and inside.bottleneck_bytes_per_s == 300e9
    same_leaf = t.route("server[0]/gpu[0]", "server[19]/gpu[0]")
    far = t.route("server[0]/gpu[0]", "server[100]/gpu[0]")
    assert (same_leaf.hops, far.hops) == (2, 4)
    assert far.bottleneck_bytes_per_s == 25e9


@pytest.mark.parametrize("bad", ["tile[9,9]", "chip[0]", "tile[0,0]/chip[0,0]/node[17,19]",
                                 "dip[20]", "host[4]", "", "tile[0,0]/x[1]"])
def test_bad_endpoints_are_user_errors(v1: Topology, bad: str) -> None:
    with pytest.raises(DojoError):
        v1.route(bad, "tile[0,0]")


def test_exapod_loads_hierarchically() -> None:
    """Smoke check of the representation (the timed goal lives in bench/bench_startup.py)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = Topology(load_system("exapod"))
    t.route("cabinet[0]/tray[0]/tile[0,0]", "cabinet[9]/tray[1]/tile[1,2]")
    # No per-node objects: loading must not grow memory by anything like 1,062,000 objects.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB
