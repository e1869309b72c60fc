"""Derived totals against the published figures of ../shared/dojo-hardware.md.

The expected numbers are the published ones (Hot Chips 34, AI Day 2021/2022, NVIDIA datasheets),
written here by hand; the code computes them from per-unit data. Tolerances reflect the rounding
in the published figures (e.g. "1.1 EFLOPS" for 1.0875e18).
"""

from __future__ import annotations

import pytest

from dojo.hardware import load_system, summarize


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.mark.parametrize(
    ("system", "bf16_flops", "tol"),
    [
        ("d1", 362e12, 0.005),      # 362 TFLOPS per D1
        ("tile", 9.05e15, 0.005),   # 9.05 PFLOPS per tile
        ("v1", 54e15, 0.01),        # 54 PFLOPS per V1 matrix
        ("cabinet", 108e15, 0.01),  # about 108 PFLOPS
        ("exapod", 1.1e18, 0.02),   # 1.1 EFLOPS
    ],
)
def test_dojo_peak_bf16_and_cfp8(system: str, bf16_flops: float, tol: float) -> None:
    s = summarize(load_system(system))
    assert rel(s.peak_flops["bf16"], bf16_flops) < tol
    assert s.peak_flops["cfp8"] == s.peak_flops["bf16"]  # CFP8 runs at the BF16 rate


@pytest.mark.parametrize(("system", "fp32", "tol"),
                         [("d1", 22.6e12, 0.005), ("tile", 565e12, 0.005),
                          ("exapod", 67.8e15, 0.005)])
def test_dojo_fp32(system: str, fp32: float, tol: float) -> None:
    assert rel(summarize(load_system(system)).peak_flops["fp32"], fp32) < tol


@pytest.mark.parametrize(("system", "sram", "tol"),
                         [("d1", 440e6, 0.01), ("tile", 11e9, 0.01), ("exapod", 1.3e12, 0.03)])
def test_sram_capacity(system: str, sram: float, tol: float) -> None:
    assert rel(summarize(load_system(system)).sram_bytes, sram) < tol


def test_v1_composition_and_hbm() -> None:
    s = summarize(load_system("v1"))
    counts = (s.counts["tiles"], s.counts["chips"], s.counts["dips"], s.counts["hosts"])
    assert counts == (6, 150, 20, 4)
    assert s.hbm_bytes == pytest.approx(640e9)  # 20 DIPs x 32 GB


def test_v1_published_io_totals() -> None:
    """18 TB/s TTP, 1 TB/s TTPoE and 640 GB/s PCIe across the V1 matrix's 20 DIPs."""
    spec = load_system("v1")
    assert spec.dip is not None
    dips = summarize(spec).counts["dips"]
    assert dips * spec.dip.ttp.bytes_per_s == pytest.approx(18e12)
    assert dips * spec.dip.ethernet.bytes_per_s == pytest.approx(1e12)
    assert dips * spec.dip.pcie.bytes_per_s == pytest.approx(640e9)


def test_exapod_composition() -> None:
    s = summarize(load_system("exapod"))
    assert s.counts["nodes"] == 1_062_000
    assert (s.counts["chips"], s.counts["tiles"]) == (3000, 120)
    assert (s.counts["dips"], s.counts["hosts"]) == (400, 80)
    assert rel(s.hbm_bytes, 13e12) < 0.05  # "about 13 TB"


def test_tile_power_and_exapod_tile_power() -> None:
    assert summarize(load_system("tile")).power_watts == pytest.approx(15e3)   # 15 kW per tile
    assert summarize(load_system("d1")).power_watts == pytest.approx(400)      # 400 W TDP
    tray = summarize(load_system("tray"))
    assert tray.power_watts > 100e3                                           # "over 100 kW"
    pod = summarize(load_system("exapod"))
    # about 1.8 MW in the tiles; the rest is DIPs and hosts
    assert pod.power_watts >= 1.8e6 and pod.power_watts < 1.8e6 * 1.2


def test_chip_bisection_matches_published_and_mesh() -> None:
    spec = load_system("d1")
    assert summarize(spec).bisection_bytes_per_s == pytest.approx(10e12)
    # The 18 x 20 mesh at 512 GB/s per link is consistent with it: 18 links cut, within 10 %.
    assert rel(18 * spec.levels[0].spec.link.bytes_per_s, 10e12) < 0.1


# HBM: the total NVML reports (nvidia-smi), not the marketed 80 GB (Modal, "Why does an NVIDIA
# H100 80GB card offer 85.52 GB?": H100 SXM 81,559 MiB, A100 80GB 81,920 MiB).
@pytest.mark.parametrize(("system", "bf16", "fp32", "hbm_bw", "power", "hbm_mib"), [
    ("a100-cluster", 312e12, 19.5e12, 2.0e12, 400.0, 81_920),
    ("h100-cluster", 989e12, 67e12, 3.35e12, 700.0, 81_559),
])
def test_gpu_references(system: str, bf16: float, fp32: float, hbm_bw: float, power: float,
                        hbm_mib: int) -> None:
    one = summarize(load_system(system, devices=1))
    assert one.counts["gpus"] == 1
    assert one.peak_flops["bf16"] == pytest.approx(bf16)
    assert one.peak_flops["fp16"] == pytest.approx(bf16)
    assert one.peak_flops["fp32"] == pytest.approx(fp32)
    assert one.hbm_bytes == hbm_mib * 2 ** 20
    spec = load_system(system)
    assert rel(spec.leaf.memory["hbm"].read_bytes_per_s, hbm_bw) < 0.03
    assert spec.leaf.power_watts == power


def test_gpu_cluster_sizes_like_published_runs() -> None:
    # Megatron-LM (Narayanan et al., SC'21) trained on up to 3,072 A100 80 GB in DGX nodes of 8
    # with 8 x 200 Gb/s HDR InfiniBand each.
    s = summarize(load_system("a100-cluster:3072"))
    assert (s.counts["gpus"], s.counts["hosts"]) == (3072, 384)
    assert s.peak_flops["bf16"] == pytest.approx(3072 * 312e12)
    spec = load_system("a100-cluster", devices=3072)
    ib = spec.levels[-1].spec.link
    assert ib.bytes_per_s * 8 == pytest.approx(200e9)  # 200 Gb/s HDR per port, in bits
    assert ib.ports == 8
    h = load_system("h100-cluster", devices=16).levels[-1].spec.link
    assert h.bytes_per_s * 8 == pytest.approx(400e9)  # 400 Gb/s NDR per port
