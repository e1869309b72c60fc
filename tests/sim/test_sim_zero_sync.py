"""The data-parallel gradient sync of ZeRO stages 0-3 against closed forms.

ZeRO as published (Rajbhandari et al. 2020, section 7): plain data parallelism all-reduces the
gradients, 2 (n-1)/n psi bytes per member on a ring; P_os (zero=1) and P_os+g (zero=2)
reduce-scatter the gradients ((n-1)/n psi) and all-gather the updated parameters ((n-1)/n psi),
the same 2 psi. Megatron-LM's distributed optimizer and DeepSpeed's ZeRO 1/2 optimizer do this;
DeepSpeed's BF16_Optimizer (zero=1, grad_acc=copy, BLOOM) all-reduces, then all-gathers.

References: gpt's parameter count by hand, jean-zay-a100's published links (4 x 100 Gb/s
Omni-Path per node of 8 GPUs), the ring and tree formulas with the calibration's efficiencies;
not the simulator's mapping or collective code."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import pytest

from dojo.hardware.loader import load_system
from dojo.plan.plan import parse_plan
from dojo.sim.overlap import bucket_time
from dojo.sim.session import compile_model
from dojo.sim.simulate import collective, device_model, simulate
from dojo.sim.stepbound import lower_bound
from dojo.sim.stepend import post_times

V, H, SEQ, LAYERS = 1000, 256, 64, 4
MODEL = {"layers": LAYERS, "hidden": H, "heads": 8, "seq": SEQ, "vocab": V, "ffn": 4 * H}
# gpt: per block two LayerNorms (2 x 2H), fused QKV (3H^2 + 3H), projection (H^2 + H),
# MLP (8H^2 + 5H); token and position tables, ln_f (2H); the head is tied.
BLOCK = 4 * H + 3 * H * H + 3 * H + H * H + H + 8 * H * H + 5 * H
WHOLE = V * H + SEQ * H + LAYERS * BLOCK + 2 * H
N, TP = 4, 8                       # dp 4 over four nodes, tp 8 filling each node
HELD = WHOLE / TP                  # parameters per GPU (pp = 1)
PER_GPU_BYTES_S = 4 * 100e9 / 8 / 8   # a node's 4 x 100 Gb/s shared by its 8 GPUs
# bytes each member sends on a ring, per byte of the collective's buffer
WIRE = {"all_reduce": 2 * (N - 1) / N, "reduce_scatter": (N - 1) / N, "all_gather": (N - 1) / N}

# (plan keys, expected (kind, bytes per parameter held) in order); FP32 gradients, bf16 weights
CASES = [
    ("zero=0", [("all_reduce", 4)]),
    ("zero=1", [("reduce_scatter", 4), ("all_gather", 2)]),
    ("zero=2", [("reduce_scatter", 4), ("all_gather", 2)]),
    ("zero=3", [("reduce_scatter", 4), ("all_gather", 2)]),
    ("zero=1,grad_reduce=bf16", [("reduce_scatter", 2), ("all_gather", 2)]),
    ("zero=1,grad_acc=copy", [("all_reduce", 4), ("all_gather", 2)]),   # BF16_Optimizer
    ("zero=0,grad_acc=copy", [("all_reduce", 4)]),
]


def _program(plan: str, devices: int = N * TP, system: str = "jean-zay-a100"
             ) -> Any:
    spec = load_system(system, devices=devices)
    return compile_model("gpt", MODEL, spec, parse_plan(plan), 16)[0]


def _recorder(calls: list[tuple[str, float]]) -> Any:
    def record(kind: str, nbytes: float, levels: Any) -> float:
        calls.append((kind, nbytes))
        return 0.0
    return record


def _ring(kind: str, nbytes: float, lat: float, bw: float) -> float:
    passes = 2 if kind == "all_reduce" else 1
    return passes * (N - 1) * (lat + nbytes / (N * bw))


def _tree(nbytes: float, lat: float, bw: float) -> float:
    return 2 * math.ceil(math.log2(N)) * lat + 2 * nbytes / bw


@pytest.mark.parametrize("keys,expected", CASES)
def test_the_sync_issues_the_published_collectives(keys: str, expected: list[tuple[str, int]]
                                                   ) -> None:
    """The exposed sync (`post_times`) asks for these collectives of these bytes."""
    program = _program(f"dp={N},tp={TP},mb=1,overlap=off,{keys}")
    calls: list[tuple[str, float]] = []
    post_times(program, device_model(program), 0, _recorder(calls))
    assert [k for k, _ in calls] == [k for k, _ in expected]
    for (_, got), (_, per_param) in zip(calls, expected):
        assert got == pytest.approx(HELD * per_param, rel=1e-12)


def test_zero_1_and_2_move_as_much_as_plain_data_parallelism() -> None:
    """Bytes on the wire per member with bf16 gradients and weights (psi = 2 bytes x params):
    plain data parallelism 2 (n-1)/n psi; ZeRO 1 and 2 (n-1)/n psi twice, the same (ZeRO
    section 7); the BF16_Optimizer all-reduces FP32 gradients (2 psi) and gathers psi."""
    wire = {}
    for keys in ("zero=0,grad_reduce=bf16", "zero=1,grad_reduce=bf16", "zero=2,grad_reduce=bf16",
                 "zero=1,grad_acc=copy"):
        program = _program(f"dp={N},tp={TP},mb=1,overlap=off,{keys}")
        calls: list[tuple[str, float]] = []
        post_times(program, device_model(program), 0, _recorder(calls))
        wire[keys] = sum(WIRE[k] * b for k, b in calls)
    psi = 2 * HELD
    for zero in (0, 1, 2):
        assert wire[f"zero={zero},grad_reduce=bf16"] == pytest.approx(2 * (N - 1) / N * psi,
                                                                      rel=1e-12)
    # FP32 gradients all-reduced (2 (n-1)/n x 2 psi), bf16 weights gathered ((n-1)/n psi)
    assert wire["zero=1,grad_acc=copy"] == pytest.approx(5 * (N - 1) / N * psi, rel=1e-12)


@pytest.mark.parametrize("keys,expected", CASES)
def test_the_ring_times_of_the_sync(keys: str, expected: list[tuple[str, int]]) -> None:
    """One fat-tree level of 4 members at 6.25 GB/s each, two switch hops of 1 us per step (the
    system file) plus the calibration's latency; an all-reduce takes the faster of the ring and
    the tree."""
    program = _program(f"dp={N},tp={TP},mb=1,overlap=off,{keys}")
    dev = device_model(program)
    lat = 2 * 1.0e-6 + dev.calibration.collective_latency_s
    bw = PER_GPU_BYTES_S * dev.calibration.link_efficiency
    want = 0.0
    for kind, per_param in expected:
        nbytes = HELD * per_param
        ring = _ring(kind, nbytes, lat, bw)
        want += min(ring, _tree(nbytes, lat, bw)) if kind == "all_reduce" else ring
    got = post_times(program, dev, 0, partial(collective, program, dev))[0]
    assert got == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("keys,expected", CASES)
def test_each_overlapped_bucket_syncs_the_same_way(keys: str, expected: list[tuple[str, int]]
                                                   ) -> None:
    """With overlap, each bucket of p whole parameters (p / tp per GPU) is reduced and gathered
    as the exposed sync is (`overlap.bucket_time`)."""
    program = _program(f"dp={N},tp={TP},mb=1,overlap=on,{keys}")
    calls: list[tuple[str, float]] = []
    bucket_time(program, float(BLOCK), _recorder(calls))
    assert [k for k, _ in calls] == [k for k, _ in expected]
    for (_, got), (_, per_param) in zip(calls, expected):
        assert got == pytest.approx(BLOCK / TP * per_param, rel=1e-12)


@pytest.mark.parametrize("plan", ["dp=2,pp=2,mb=1,zero=1,overlap=off",
                                  "dp=2,pp=2,mb=1,interleave=2,zero=1,overlap=on",
                                  "dp=2,pp=2,mb=1,interleave=2,zero=1,grad_reduce=bf16"])
def test_the_compiled_bound_stays_below_under_zero_1(plan: str) -> None:
    program = _program(plan, 4, system="a100-cluster")
    assert lower_bound(program) <= simulate(program).step_time_s * (1 + 1e-12)
