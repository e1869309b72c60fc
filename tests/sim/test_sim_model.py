"""The simulator end to end: memory and FLOPs against closed forms, energy, scaling, search."""

from __future__ import annotations

import pytest

from dojo.errors import DojoError
from dojo.hardware import load_system
from dojo.plan import parse_plan
from dojo.sim.search import best_plan, exhaustive
from dojo.sim.session import simulate_model

SMALL = {"layers": 8, "hidden": 256, "heads": 8, "ffn": 1024, "vocab": 4096, "seq": 256}


def _params(h: int, layers: int, ffn: int, vocab: int, seq: int) -> int:
    """GPT-2 parameters by hand: blocks (qkv, proj, mlp, 2 LayerNorms), embeddings, final LN."""
    block = (3 * h * h + 3 * h) + (h * h + h) + (h * ffn + ffn) + (ffn * h + h) + 4 * h
    return layers * block + vocab * h + seq * h + 2 * h


def test_mixed_precision_state_is_18_bytes_per_parameter() -> None:
    """BF16 weights (2) + FP32 master (4) + FP32 grads (4) + Adam m, v (8): Korthikanti et al."""
    sim = simulate_model("gpt", SMALL, "a100-cluster:1", parse_plan("dp=1"), 4)
    n = _params(256, 8, 1024, 4096, 256)
    mem = sim.result.memory
    assert mem.params == pytest.approx(6 * n)
    assert mem.grads == pytest.approx(4 * n)
    assert mem.optimizer_state == pytest.approx(8 * n)


def test_zero_and_tp_divide_the_state() -> None:
    n = _params(256, 8, 1024, 4096, 256)
    z1 = simulate_model("gpt", SMALL, "a100-cluster:4", parse_plan("dp=4,zero=1"), 8)
    assert z1.result.memory.optimizer_state == pytest.approx(8 * n / 4)
    assert z1.result.memory.grads == pytest.approx(4 * n)
    tp = simulate_model("gpt", SMALL, "a100-cluster:4", parse_plan("dp=1,tp=4"), 8)
    assert tp.result.memory.grads == pytest.approx(4 * n / 4)


def test_model_flops_are_six_n_tokens_plus_attention() -> None:
    batch, s, h, layers = 8, 256, 256, 8
    sim = simulate_model("gpt", SMALL, "a100-cluster:2", parse_plan("dp=2"), batch)
    matmul_params = layers * (4 * h * h + 2 * h * 1024) + 4096 * h  # blocks + tied LM head
    attention = 3 * 4 * layers * s * s * h * batch                  # QK^T and PV, fwd + 2x bwd
    expect = 6 * matmul_params * batch * s + attention
    # Vector ops (norms, GELU, softmax, Adam excluded) add a little on top of the matmuls.
    assert sim.result.model_flops == pytest.approx(expect, rel=0.03)
    assert sim.result.model_flops >= expect


def test_energy_of_one_busy_gpu() -> None:
    sim = simulate_model("gpt", SMALL, "a100-cluster:1", parse_plan("dp=1"), 4)
    r = sim.result
    _, opt_start, opt_end = r.optimizer_spans[0]
    busy = sum(s.end - s.start for s in r.spans) + (opt_end - opt_start)
    idle = r.step_time_s - busy
    # 400 W busy, 25 % idle, plus the DGX's 3.3 kW beyond its GPUs for the whole step.
    expect = busy * 400 + idle * 400 * 0.25 + 3300 * r.step_time_s
    assert r.energy_j == pytest.approx(expect)


def test_more_tiles_never_slower_at_fixed_batch_per_tile() -> None:
    rates = []
    for system, tiles in (("tile", 1), ("tray", 6), ("cabinet", 12)):
        spec = load_system(system)
        chips = 25 * tiles
        sim = simulate_model("gpt", SMALL, spec, parse_plan(f"dp={chips}"), 2 * chips)
        rates.append(sim.result.samples_per_s)
    assert rates[0] < rates[1] < rates[2]


@pytest.mark.parametrize(("system", "batch"), [
    ("tile", 25), pytest.param("a100-cluster:4", 12, marks=pytest.mark.slow)])
def test_search_matches_exhaustive_enumeration(system: str, batch: int) -> None:
    """Branch and bound prunes only what its true lower bounds rule out: the same best as
    simulating every plan of the space, each from its own capture (micro-batches of 3, 5, 6
    and 12 included; tests/sim/test_sim_search.py checks the space itself)."""
    spec = load_system(system)
    found = best_plan("gpt", SMALL, spec, batch)
    reference = exhaustive("gpt", SMALL, spec, batch)
    assert found.best.step_time_s == pytest.approx(reference.step_time_s, rel=1e-9)
    assert found.evaluated < found.considered


def test_plans_that_do_not_fit_are_rejected_with_bytes() -> None:
    """A lone D1 has only its 442.5 MB of SRAM: GPT-2 medium (355M x 18 bytes) cannot fit."""
    with pytest.raises(DojoError, match=r"needs [0-9.]+ GB per chip .* > capacity 0.44 GB"):
        best_plan("gpt2-medium", {}, load_system("d1"), 1, seq=128)


def test_dojo_rejection_carries_the_per_chip_report() -> None:
    """GPT-3 on V1: 175e9 params x 18 bytes / 150 chips >> 442.5 MB SRAM + 4.27 GB of DIP HBM."""
    sim = simulate_model("gpt3-175b", {}, "v1",
                         parse_plan("dp=25,tp=6,pp=1,zero=3,recompute=full"), 50)
    mem = sim.result.memory
    assert not mem.fits
    assert "out of memory on 150 of 150 chips" in mem.reason
    assert "tile[0,0]/chip[0,0]" in mem.reason and "short by" in mem.reason
    # Capacity per chip: its SRAM plus its share of the 20 x 32 GB of DIP HBM.
    assert mem.capacity == pytest.approx(354 * 1.25e6 + 20 * 32e9 / 150)


def test_optimizer_step_adds_clipping_and_loss_scaling_passes() -> None:
    """One A100, fused AdamW over N parameters with FP32 master weights, gradients and two
    states: read master, gradient, m, v; write master, m, v and the 16-bit weights (30 B), plus
    a read of the gradients for the clipping norm (4 B); FP16 adds the loss-scale unscale and
    inf check, a read and a write of the gradients (8 B)."""
    n = _params(SMALL["hidden"], SMALL["layers"], SMALL["ffn"], SMALL["vocab"], SMALL["seq"])
    bw = 2.039e12 * 0.85  # A100 80 GB HBM x calibrated vector efficiency
    times = {}
    for precision in ("bf16", "fp16"):
        plan = parse_plan(f"dp=1,mb=2,precision={precision},fusion=kernels")
        sim = simulate_model("gpt", SMALL, "a100-cluster", plan, 2, devices=1)
        times[precision] = sim.result.breakdown_s["optimizer"]
    assert times["bf16"] == pytest.approx(n * (30 + 4) / bw + 4e-6, rel=1e-6)
    assert times["fp16"] - times["bf16"] == pytest.approx(n * 8 / bw, rel=1e-6)
