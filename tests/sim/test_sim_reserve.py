"""The GPU's non-tensor reserve: CUDA context, cuBLAS workspaces and NCCL buffers, each from its
published figure (sources in `dojo.sim.reserve`), against closed forms written here."""

from __future__ import annotations

import pytest

from dojo.hardware.loader import load_system
from dojo.plan.plan import parse_plan
from dojo.sim.memory import capacity_of
from dojo.sim.reserve import communicators, nccl_reserve
from dojo.sim.validate import load_cases, predict_case

MIB = 2 ** 20
CONTEXT = 1008 * MIB      # CUDA context without lazy loading (pytorch/pytorch#28394)
CUBLAS = 2 * 32 * MIB     # cuBLAS + cuBLASLt workspaces on Hopper (pytorch/pytorch#89027)
PER_COMM = 32 * 2 * 4 * MIB  # 32 channels x 2 ring connections x NCCL_BUFFSIZE 4 MiB


@pytest.mark.parametrize(("system", "mib"), [("h100-cluster", 81_559), ("a100-cluster", 81_920),
                                             ("h200-cluster", 143_771)])
def test_capacity_is_nvml_total_less_context_and_workspaces(system: str, mib: int) -> None:
    assert capacity_of(load_system(system, devices=1))[0] == mib * MIB - CONTEXT - CUBLAS


def test_cpu_device_holds_no_reserve() -> None:
    assert capacity_of(load_system("cpu"))[0] == 24.0e9


@pytest.mark.parametrize(("plan", "comms"), [
    ("dp=1", 0), ("tp=8", 1), ("tp=8,pp=16,dp=64", 3), ("tp=8,pp=16,cp=16,dp=8", 5),
    ("tp=8,pp=16,dp=8,ep=8", 4), ("cp=2", 1),
])
def test_communicators_per_plan(plan: str, comms: int) -> None:
    p = parse_plan(plan)
    assert communicators(p) == comms
    assert nccl_reserve(p) == comms * PER_COMM


def test_plan_capacity_takes_its_nccl_buffers() -> None:
    """Llama 3 405B's 8K plan on H100s (tp 8, pp 16, dp 64): 3 communicators, 768 MiB."""
    case = next(c for c in load_cases() if c.id == "llama3-405b-8k-8192")
    _, _, _, cap = predict_case(case)
    assert cap == 81_559 * MIB - CONTEXT - CUBLAS - 3 * PER_COMM
