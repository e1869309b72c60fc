"""jean-zay-a100 (BLOOM 176B's machine) against its published figures, written here by hand:
nodes of 8 A100 SXM4 80 GB with 4 Omni-Path links of 100 Gb/s each (BLOOM paper,
arXiv:2211.05100, section 3.4.1; BigScience's tr11-176B-ml README), 48 nodes for the run's 384
GPUs. The GPU and the node's NVLink are a100-cluster's (the same A100 SXM4 80 GB, datasheet
figures); only the network between nodes differs from Selene's 8 x 200 Gb/s HDR."""

from __future__ import annotations

import pytest

from dojo.compiler.mapping import group_levels
from dojo.hardware import load_system, summarize

OPA_PORT = 100e9 / 8          # bytes/s: 100 Gb/s per Omni-Path port
PORTS, GPUS_PER_NODE = 4, 8   # Omni-Path links and A100s per node


def test_the_fabric_is_four_100_gbps_omni_path_ports_per_node() -> None:
    spec = load_system("jean-zay-a100", devices=384)
    server, cluster = spec.levels[0], spec.levels[1]
    assert server.spec.count == GPUS_PER_NODE
    assert cluster.spec.count == 48                    # 384 GPUs / 8
    assert cluster.spec.link.bytes_per_s == OPA_PORT   # 12.5 GB/s
    assert cluster.spec.link.ports == PORTS
    assert server.spec.edges == PORTS and server.spec.edge is not None
    assert server.spec.edge.bytes_per_s == OPA_PORT
    # bisection of 48 nodes x 4 ports x 12.5 GB/s, halved: 1.2 TB/s per direction
    assert summarize(spec).bisection_bytes_per_s == pytest.approx(48 * PORTS * OPA_PORT / 2)


def test_a_data_parallel_group_across_nodes_gets_a_quarter_of_selenes_share() -> None:
    """tp 8 fills a node, so a dp group of 4 spans 4 nodes, one GPU each: its members share
    their node's 4 x 12.5 GB/s among 8 GPUs (6.25 GB/s), against Selene's 8 x 25 GB/s / 8 =
    25 GB/s: a quarter."""
    for system, per_gpu in (("jean-zay-a100", PORTS * OPA_PORT / GPUS_PER_NODE),
                            ("a100-cluster", 8 * 200e9 / 8 / GPUS_PER_NODE)):
        (level,) = group_levels(load_system(system, devices=32), 4, 8)
        assert level.members == 4
        assert level.bytes_per_s == pytest.approx(per_gpu, rel=1e-12)


def test_the_gpu_and_nvlink_are_the_a100_sxm4_80gbs() -> None:
    """A100 datasheet: 312 TFLOP/s dense bf16, 19.5 fp32, 2,039 GB/s of HBM2e; NVML's 81,920
    MiB; NVLink 3 through NVSwitch, 12 links x 25 GB/s per direction."""
    spec = load_system("jean-zay-a100", devices=384)
    gpu = spec.leaf
    assert gpu.peak_flops["bf16"] == 312e12 and gpu.peak_flops["fp32"] == 19.5e12
    assert gpu.memory["hbm"].bytes == 81920 * 2**20
    assert gpu.memory["hbm"].read_bytes_per_s == 2.039e12
    assert spec.levels[0].spec.topology == "switch"
    assert spec.levels[0].spec.link.bytes_per_s == 12 * 25e9
