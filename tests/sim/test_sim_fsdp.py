"""PyTorch FSDP's copies around ZeRO 3's collectives (`fsdp=1|2`) against closed forms.

Per micro-batch and wrapped module, from PyTorch's code paths (docs/simulator.md): FSDP1
casts the FP32 shard to bf16 before each gather (4 + 2 bytes per shard element), and in the
backward concatenates the views' bf16 gradients into the FlatParameter's (2 + 2 per
parameter), casts them to the FP32 reduction dtype (2 + 4), pre-divides them (4 + 4),
post-divides the reduced shard (4 + 4 per shard element) and adds it to the step's sharded
gradient from the second micro-batch on (4 + 4 + 4); FSDP2 copies the shard into the gather's
input (4 + 2) and the gathered buffer out into the parameters (2 + 2) on every gather, and the
gradients into the reduce-scatter input at FP32 (2 + 4). Each is a bandwidth-bound kernel at
the A100's 2,039 GB/s (datasheet) times the calibrated vector efficiency, plus its launch.

References: gpt's parameter count by hand, the byte counts above, PyTorch's pre-divide factors
worked by hand; not the simulator's own kernel list."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dojo.errors import ConfigError
from dojo.hardware.loader import load_system
from dojo.plan.plan import parse_plan
from dojo.sim.fsdp import predivide_factor
from dojo.sim.session import compile_model
from dojo.sim.simulate import device_model, simulate
from dojo.sim.stepbound import lower_bound

V, H, SEQ, LAYERS = 1000, 1024, 64, 4
MODEL = {"layers": LAYERS, "hidden": H, "heads": 16, "seq": SEQ, "vocab": V, "ffn": 4 * H}
# gpt (models/gpt.py): per block two LayerNorms (2 x 2H), fused QKV (3H^2 + 3H), projection
# (H^2 + H), MLP (8H^2 + 5H); token and position tables, ln_f (2H); the head is tied.
BLOCK = 4 * H + 3 * H * H + 3 * H + H * H + H + 8 * H * H + 5 * H
WHOLE = V * H + SEQ * H + LAYERS * BLOCK + 2 * H
HBM = 2.039e12


def _pair(plan: str, fsdp: int):  # type: ignore[no-untyped-def]
    spec = load_system("a100-cluster", devices=8)
    base = compile_model("gpt", MODEL, spec, parse_plan(plan), 16)[0]
    return base, replace(base, plan=replace(base.plan, fsdp=fsdp))


@pytest.mark.parametrize("ranks,factor", [(1, 1), (2, 2), (4, 2), (8, 4), (16, 4), (32, 8),
                                          (64, 8), (128, 16), (6, 4), (12, 4)])
def test_predivide_factor_is_pytorchs(ranks: int, factor: int) -> None:
    """`DefaultState._get_gradient_predivide_factor`: double f from 1 while f divides the world
    size and the world size / f > f (worked by hand; at 6 the last doubling passes 2, which
    divides 6, and ends on 4, which does not)."""
    assert predivide_factor(ranks) == factor


@pytest.mark.parametrize("fsdp,reduce,per_param,per_shard,kernels", [
    # FSDP1, FP32 reduction: F shard cast 6S; B shard cast 6S, cat 4P, cast 6P, pre-divide 8P
    # (factor 4 at 8 ranks), post-divide 8S (8 / 4 = 2 > 1), accumulate 12S x (2 - 1) / 2
    (1, "auto", 4 + 6 + 8, 6 + 6 + 8 + 6, 1 + 6),
    # FSDP1, BF16 reduction: no cast up; pre-divide 4P, post-divide 4S, the shard to FP32 6S
    (1, "bf16", 4 + 4, 6 + 6 + 4 + 6 + 6, 1 + 6),
    # FSDP2: each of the two gathers copies in 6S and out 4P; chunk_cat 6P; accumulate 6S
    (2, "auto", 4 + 4 + 6, 6 + 6 + 6, 2 + 4),
])
def test_fsdp_adds_its_copies_to_every_micro_batch(fsdp: int, reduce: str, per_param: float,
                                                   per_shard: float, kernels: int) -> None:
    """dp 8 on one A100 node, 2 micro-batches per replica, sync exposed: the step grows by
    2 x (bytes / (HBM x vector efficiency) + kernels x 5 wrapped modules x launch), the
    modules being the 4 blocks and the root; the breakdown counts it as compute."""
    plain, with_fsdp = _pair(f"dp=8,mb=1,zero=3,overlap=off,grad_reduce={reduce}", fsdp)
    cal = device_model(plain).calibration
    assert plain.microbatches == 2
    params, shard = WHOLE, WHOLE / 8
    per_micro = ((params * per_param + shard * per_shard) / (HBM * cal.vector_efficiency)
                 + kernels * (LAYERS + 1) * cal.launch_s)
    a, b = simulate(plain), simulate(with_fsdp)
    assert b.step_time_s - a.step_time_s == pytest.approx(2 * per_micro, rel=1e-9)
    extra = {k: b.breakdown_s[k] - a.breakdown_s[k] for k in a.breakdown_s}
    assert extra["compute"] == pytest.approx(2 * per_micro, rel=1e-9)
    assert extra["bubble"] == pytest.approx(0.0, abs=1e-9)


def test_the_compiled_bound_stays_below_with_fsdp() -> None:
    _, program = _pair("dp=8,mb=1,zero=3,overlap=on", 1)
    assert lower_bound(program) <= simulate(program).step_time_s * (1 + 1e-12)


@pytest.mark.parametrize("plan,says", [
    ("dp=2,zero=2,fsdp=1", "zero=3"),
    ("dp=4,ep=2,zero=3,fsdp=2", "ep=1"),
    ("dp=2,zero=3,fsdp=3", "fsdp"),
])
def test_a_bad_fsdp_is_refused_in_one_line(plan: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_plan(plan)
    assert "fsdp" in str(err.value) and says in str(err.value)
    assert "\n" not in str(err.value)


def test_fsdp_round_trips_through_the_plan_text() -> None:
    plan = parse_plan("dp=2,zero=3,fsdp=2")
    assert "fsdp=2" in plan.text() and parse_plan(plan.text(full=True)) == plan
    assert "fsdp" not in parse_plan("dp=2,zero=3").text(full=True)
