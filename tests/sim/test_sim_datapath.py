"""The host -> DIP -> tile data path against its closed forms."""

from __future__ import annotations

import math

import pytest

from dojo.errors import DojoError
from dojo.hardware import load_system
from dojo.sim.datapath import IngestHost, data_path


def test_decode_and_transfer_closed_forms() -> None:
    v1 = load_system("v1")  # 4 hosts x 64 cores, 20 DIPs at 32 GB/s PCIe
    path = data_path(v1, batch=64, images_per_sample=48, bytes_per_sample=48 * 3 * 960 * 1280,
                     decode_fps_per_core=100.0, step_s=0.5)
    assert path.decode_s == pytest.approx(64 * 48 / (4 * 64 * 100.0))
    assert path.transfer_s == pytest.approx(64 * 48 * 3 * 960 * 1280 / (20 * 32e9))
    assert path.data_s == max(path.decode_s, path.transfer_s)
    # Frames needed per second over one host's decode rate.
    assert path.hosts_needed == math.ceil(64 * 48 / 0.5 / (64 * 100.0))
    assert path.bottleneck == (path.data_s > 0.5)


def test_ingest_hosts_cover_the_deficit() -> None:
    v1 = load_system("v1")
    path = data_path(v1, batch=256, images_per_sample=48, bytes_per_sample=48 * 3 * 64 * 96,
                     decode_fps_per_core=50.0, step_s=0.1, ingest=IngestHost(cores=16))
    need = 256 * 48 / 0.1
    have = 4 * 64 * 50.0
    assert path.bottleneck
    assert path.ingest_hosts_needed == math.ceil((need - have) / (16 * 50.0))
    assert path.exposed_s == pytest.approx(path.data_s - 0.1)


def test_systems_without_hosts_are_refused() -> None:
    with pytest.raises(DojoError, match="no hosts"):
        data_path(load_system("tile"), 1, 1, 1.0, 10.0, 1.0)


def test_waiting_for_data_costs_time_and_idle_energy() -> None:
    from dojo.plan import parse_plan
    from dojo.sim.datapath import with_data
    from dojo.sim.session import simulate_model

    small = {"layers": 2, "hidden": 64, "heads": 4, "ffn": 256, "vocab": 512, "seq": 64}
    sim = simulate_model("gpt", small, "v1", parse_plan("dp=150"), 150)
    r = sim.result
    path = data_path(load_system("v1"), 150, 48, 48 * 3 * 64 * 96, 10.0, r.step_time_s)
    fed = with_data(r, path, idle_fraction=0.3)
    assert path.bottleneck and fed.breakdown_s["data"] == pytest.approx(path.exposed_s)
    assert fed.step_time_s == pytest.approx(r.step_time_s + path.exposed_s)
    expect = r.energy_j + r.energy_j / r.step_time_s * 0.3 * path.exposed_s
    assert fed.energy_j == pytest.approx(expect)
    assert fed.samples_per_s == pytest.approx(150 / fed.step_time_s)
