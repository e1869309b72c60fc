"""DeepSpeed's BF16_Optimizer gradient path against closed forms.

zero=1 with grad_acc=copy: after the last backward the FP32 gradients are all-reduced over dp
whole (the pipeline engine's `_bf16_reduce_grads`), then each rank updates its shard and the
bf16 parameters are all-gathered (`update_lp_params`): per parameter 2 (n-1)/n x 4 bytes, then
(n-1)/n x 2 bytes per member, where ZeRO 1 as published (grad_acc=inplace) and zero=2
reduce-scatter ((n-1)/n x 4). grad_acc=copy: after every
micro-batch's backward, `update_hp_grads` casts the bf16 gradients to FP32 (read 2, write 4
bytes) and adds them to the FP32 buffer (read 4 + 4, write 4), two kernels.

References: gpt's parameter count by hand, jean-zay-a100's published link figures (4 x 100 Gb/s
Omni-Path per node of 8 GPUs), the A100's 2,039 GB/s, and the ring and tree formulas with the
calibration's efficiencies; not the simulator's mapping or collective code."""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial

import pytest

from dojo.errors import ConfigError
from dojo.hardware.loader import load_system
from dojo.plan.plan import parse_plan
from dojo.sim.memory import device_memory
from dojo.sim.session import compile_model
from dojo.sim.simulate import collective, device_model, simulate
from dojo.sim.stepbound import lower_bound
from dojo.sim.stepend import post_times

V, H, SEQ, LAYERS = 1000, 256, 64, 4
MODEL = {"layers": LAYERS, "hidden": H, "heads": 8, "seq": SEQ, "vocab": V, "ffn": 4 * H}
# gpt (models/gpt.py): per block two LayerNorms (2 x 2H), fused QKV (3H^2 + 3H), projection
# (H^2 + H), MLP (8H^2 + 5H); token and position tables, ln_f (2H); the head is tied.
BLOCK = 4 * H + 3 * H * H + 3 * H + H * H + H + 8 * H * H + 5 * H
WHOLE = V * H + SEQ * H + LAYERS * BLOCK + 2 * H
PER_GPU_BYTES_S = 4 * 100e9 / 8 / 8   # a node's 4 x 100 Gb/s shared by its 8 GPUs


def _program(plan: str, devices: int, system: str = "jean-zay-a100",
             model: dict[str, int] | None = None):  # type: ignore[no-untyped-def]
    spec = load_system(system, devices=devices)
    return compile_model("gpt", model or MODEL, spec, parse_plan(plan), 16)[0]


def _ring(kind: str, nbytes: float, n: int, lat: float, bw: float) -> float:
    passes = 2 if kind == "all_reduce" else 1
    return passes * (n - 1) * (lat + nbytes / (n * bw))


def _tree(nbytes: float, n: int, lat: float, bw: float) -> float:
    return 2 * math.ceil(math.log2(n)) * lat + 2 * nbytes / bw


@pytest.mark.parametrize("zero,acc", [(0, "inplace"), (1, "copy"), (1, "inplace"), (2, "inplace")])
def test_bf16_optimizer_all_reduces_fp32_then_gathers_bf16_over_omni_path(zero: int, acc: str
                                                                          ) -> None:
    """tp 8 fills a node and dp 4 spans four: one fat-tree level of 4 members at 6.25 GB/s
    each, two switch hops of 1 us per step (the system file) plus the calibration's latency.
    Only the BF16_Optimizer (zero=1, grad_acc=copy) all-reduces before its all-gather."""
    program = _program(f"dp=4,tp=8,mb=1,zero={zero},grad_acc={acc},overlap=off", 32)
    cal = device_model(program).calibration
    n, held = 4, WHOLE / 8
    lat = 2 * 1.0e-6 + cal.collective_latency_s
    bw = PER_GPU_BYTES_S * cal.link_efficiency
    gather = _ring("all_gather", held * 2, n, lat, bw) if zero >= 1 else 0.0
    if zero >= 1 and acc == "inplace":
        grads = _ring("reduce_scatter", held * 4, n, lat, bw)
    else:
        grads = min(_ring("all_reduce", held * 4, n, lat, bw), _tree(held * 4, n, lat, bw))
    dev = device_model(program)
    t_sync = post_times(program, dev, 0, partial(collective, program, dev))[0]
    assert t_sync == pytest.approx(grads + gather, rel=1e-9)


@pytest.mark.parametrize("zero", [1, 2])
def test_the_all_reduce_moves_twice_the_reduce_scatters_bytes(zero: int) -> None:
    """Per member: the BF16_Optimizer's all-reduce is 2 (n-1) ring steps of 4 / n bytes per
    parameter, ZeRO 1's and 2's reduce-scatter (n-1) of them; both then gather the same bf16
    bytes, so the syncs differ by (n-1) steps: (n-1) (latency + 4 x params / (n bw))."""
    big = {**MODEL, "hidden": 1024, "ffn": 4096, "heads": 16}
    one = _program("dp=4,tp=8,mb=1,zero=1,grad_acc=copy,overlap=off", 32, model=big)
    two = _program(f"dp=4,tp=8,mb=1,zero={zero},overlap=off", 32, model=big)
    dev = device_model(one)
    coll = partial(collective, one, dev)
    t1, t2 = post_times(one, dev, 0, coll)[0], post_times(two, dev, 0, coll)[0]
    held = (1000 * 1024 + SEQ * 1024 + LAYERS * (4 * 1024 + 12 * 1024**2 + 9 * 1024)
            + 2 * 1024) / 8
    bw = PER_GPU_BYTES_S * dev.calibration.link_efficiency
    lat = 2 * 1.0e-6 + dev.calibration.collective_latency_s
    assert t1 - t2 == pytest.approx(3 * (lat + held * 4 / (4 * bw)), rel=1e-9)


def test_grad_acc_copy_adds_the_cast_and_the_add_to_every_micro_batch() -> None:
    """dp 1, pp 1: the step is the micro-batches' forwards and backwards in turn, then the
    update; copy adds to each backward one cast (6 bytes per parameter) and one add (12),
    two kernels at the HBM's 2,039 GB/s times the calibrated vector efficiency."""
    big = {**MODEL, "hidden": 1024, "ffn": 4096, "heads": 16}
    inplace = _program("tp=1,mb=1,overlap=off", 1, system="a100-cluster", model=big)
    copy = replace(inplace, plan=replace(inplace.plan, grad_acc="copy"))
    cal = device_model(inplace).calibration
    params = 1000 * 1024 + SEQ * 1024 + LAYERS * (4 * 1024 + 12 * 1024**2 + 9 * 1024) + 2 * 1024
    assert inplace.device_params(0) == pytest.approx(params, rel=1e-12)
    per_micro = 2 * cal.launch_s + params * (6 + 12) / (2.039e12 * cal.vector_efficiency)
    micro = inplace.microbatches
    assert micro == 16
    sim_in, sim_copy = simulate(inplace), simulate(copy)
    assert sim_copy.step_time_s - sim_in.step_time_s == pytest.approx(micro * per_micro, rel=1e-9)
    # the breakdown counts the passes as optimizer work, not as pipeline bubble
    extra = {k: sim_copy.breakdown_s[k] - sim_in.breakdown_s[k] for k in sim_in.breakdown_s}
    assert extra["optimizer"] == pytest.approx(micro * per_micro, rel=1e-9)
    assert extra["bubble"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("plan,says", [
    ("dp=2,grad_acc=copy,precision=fp32", "precision is fp32"),
    ("dp=2,grad_acc=copy,grad_reduce=bf16", "grad_reduce bf16"),
    ("dp=2,grad_acc=fused", "one of inplace, copy"),
    ("dp=2,zero=2,grad_acc=copy", "zero 0 or 1"),
])
def test_a_bad_grad_acc_is_refused_in_one_line(plan: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_plan(plan)
    assert "grad_acc" in str(err.value) and says in str(err.value)
    assert "\n" not in str(err.value)


def test_grad_acc_copy_holds_the_bf16_grads_beside_the_fp32_buffer() -> None:
    """ZeRO-1 over dp 2, tp 2: the FP32 gradient buffer (4 bytes per parameter) stays whole on
    both paths (ZeRO 1 shards only the optimizer state); copy adds the bf16 `.grad` of every
    weight (2 bytes)."""
    inplace = _program("dp=2,tp=2,mb=1,zero=1", 4, system="a100-cluster")
    copy = replace(inplace, plan=replace(inplace.plan, grad_acc="copy"))
    held = WHOLE / 2
    assert device_memory(inplace).grads == pytest.approx(held * 4, rel=1e-12)
    assert device_memory(copy).grads == pytest.approx(held * (4 + 2), rel=1e-12)


def test_grad_acc_copy_round_trips_through_the_plan_text() -> None:
    plan = parse_plan("dp=2,zero=1,grad_acc=copy")
    assert "grad_acc=copy" in plan.text() and parse_plan(plan.text(full=True)) == plan
    assert "grad_acc" not in parse_plan("dp=2").text(full=True)


@pytest.mark.parametrize("plan", ["dp=2,pp=2,mb=1,zero=1,overlap=off",
                                  "dp=2,pp=2,mb=1,interleave=2,zero=1,overlap=on"])
def test_the_compiled_bound_stays_below_with_copy(plan: str) -> None:
    inplace = _program(plan, 4, system="a100-cluster")
    copy = replace(inplace, plan=replace(inplace.plan, grad_acc="copy"))
    assert lower_bound(copy) <= simulate(copy).step_time_s * (1 + 1e-12)
    assert lower_bound(copy) > lower_bound(inplace)
