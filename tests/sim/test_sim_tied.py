"""The tied embedding across the pipeline against closed forms: with pp > 1 and a token
embedding tied to the LM head (gpt), the last stage keeps its own copy of the V x H table and
the two stages all-reduce its gradient (Megatron-LM's `_allreduce_word_embedding_grads`) after
the backward: one tp rank's V x H / tp elements at the gradient dtype, two members, on the
link between the first and the last stage's devices. The references are the model's
hyperparameters, the system file's link figures and the ring formula for two ranks,
2 (latency + alpha) + bytes / (bandwidth x efficiency), not the simulator's mapping."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dojo.hardware.loader import load_system
from dojo.plan.plan import parse_plan
from dojo.sim.memory import device_memory
from dojo.sim.session import compile_model
from dojo.sim.simulate import device_model, simulate
from dojo.sim.stepbound import lower_bound

V, H, LAYERS = 1000, 256, 4
MODEL = {"layers": LAYERS, "hidden": H, "heads": 8, "seq": 64, "vocab": V, "ffn": 4 * H}
# gpt's parameters (models/gpt.py): token table V x H and positions seq x H; per block two
# LayerNorms (2 x 2H), fused QKV (3H^2 + 3H), projection (H^2 + H), MLP (2 x 4H^2 + 5H); ln_f.
BLOCK = 4 * H + 3 * H * H + 3 * H + H * H + H + 8 * H * H + 5 * H


def _program(model: str, plan: str, devices: int, overrides: dict[str, int] | None = None,
             system: str = "a100-cluster"):  # type: ignore[no-untyped-def]
    spec = load_system(system, devices=devices)
    return compile_model(model, overrides or MODEL, spec, parse_plan(plan), 16)[0]


@pytest.mark.parametrize("model,plan,tied", [
    ("gpt", "tp=2,pp=2,mb=1", True),
    ("gpt", "tp=2,pp=4,mb=1,interleave=1", True),
    ("gpt", "tp=2,pp=2,mb=1,interleave=2", True),
    ("gpt", "tp=2,dp=4,mb=1", False),       # one stage holds embedding and head
    ("llama", "tp=2,pp=2,mb=1", False),     # untied output layer
])
def test_the_collective_is_there_exactly_with_pp_and_a_tied_head(model: str, plan: str,
                                                                  tied: bool) -> None:
    overrides = MODEL if model == "gpt" else {"layers": 4, "hidden": 256, "heads": 8,
                                              "kv_heads": 2, "seq": 64, "vocab": V}
    program = _program(model, plan, 8, overrides)
    assert (program.tied is not None) == tied
    if tied:
        assert program.tied.kind == "all_reduce" and program.tied.group == "tied"
        assert len(program.tied.levels) == 1 and program.tied.levels[0].members == 2


@pytest.mark.parametrize("plan,nbytes", [
    ("tp=2,pp=2,mb=1", 4),                    # bf16: FP32 main gradients (Megatron-LM)
    ("tp=4,pp=2,mb=1,grad_reduce=bf16", 2),
    ("tp=1,pp=2,mb=1,precision=fp32", 4),
])
def test_bytes_are_one_tp_ranks_rows_at_the_gradient_dtype(plan: str, nbytes: int) -> None:
    program = _program("gpt", plan, 8)
    assert program.tied.nbytes == V * H / program.plan.tp * nbytes


def _two_rank_all_reduce(program, link_level: int, nbytes: float) -> float:  # type: ignore[no-untyped-def]
    """Ring all-reduce of two ranks on level `link_level` of the system file: each member's
    bandwidth is the link's ports over the devices sharing them (a switch gives each its own),
    the latency two hops (through the switch)."""
    spec = program.system
    lv = spec.levels[link_level]
    share = 1 if lv.spec.topology == "switch" else spec.levels[link_level - 1].spec.count
    bw = lv.spec.link.bytes_per_s * lv.spec.link.ports / share
    cal = device_model(program).calibration
    return 2 * (2 * lv.spec.link.latency_s + cal.collective_latency_s) \
        + nbytes / (bw * cal.link_efficiency)


@pytest.mark.parametrize("plan,devices,level", [
    ("tp=8,pp=2,mb=1,overlap=off", 16, 1),   # stages on two servers: InfiniBand
    ("tp=4,pp=2,mb=1,overlap=off", 8, 0),    # one server: NVLink through the NVSwitch
    ("tp=2,pp=4,mb=1,overlap=on", 8, 0),
])
def test_it_delays_both_ends_update_by_the_two_rank_all_reduce(plan: str, devices: int,
                                                               level: int) -> None:
    """dp = 1 (no gradient reduction): stage 0 ends the backward last, so both its update and
    the last stage's start the all-reduce's seconds after stage 0's last backward; the stages
    in between are not delayed."""
    program = _program("gpt", plan, devices)
    expected = _two_rank_all_reduce(program, level, V * H / program.plan.tp * 4)
    tied, untied = simulate(program), simulate(replace(program, tied=None))
    last = program.plan.pp - 1
    end0 = max(s.end for s in tied.spans if s.stage == 0 and s.kind == "B")
    assert tied.optimizer_spans[0][1] - end0 == pytest.approx(expected, rel=1e-9)
    assert tied.optimizer_spans[last][1] == pytest.approx(tied.optimizer_spans[0][1], rel=1e-12)
    assert tied.optimizer_spans[0][1] - untied.optimizer_spans[0][1] == pytest.approx(
        expected, rel=1e-9)
    for stage in range(1, last):
        assert tied.optimizer_spans[stage] == untied.optimizer_spans[stage]


@pytest.mark.parametrize("plan", [
    "tp=2,pp=2,dp=2,mb=1,overlap=off", "tp=2,pp=2,dp=2,mb=1,overlap=on,zero=1",
    "tp=1,pp=4,dp=2,mb=1,interleave=1,overlap=on", "tp=2,pp=2,dp=2,mb=1,interleave=2",
    "pp=2,dp=4,mb=2,schedule=gpipe,zero=2"])
def test_lower_bound_stays_below_the_simulation(plan: str) -> None:
    program = _program("gpt", plan, 8)
    assert program.tied is not None
    assert lower_bound(program) <= simulate(program).step_time_s * (1 + 1e-12)


def test_the_last_stage_holds_its_copy_with_grads_and_sharded_state() -> None:
    """pp=2 over 4 blocks: stage 1 holds blocks 2-3, ln_f and its copy of the V x H table,
    split tp ways; bf16 with ZeRO-1 over dp: 2-byte weights, 4-byte main gradients, and the
    4-byte masters and 8 bytes of Adam state per parameter sharded dp ways. A vocabulary of
    50000 makes stage 1 the fuller stage (stage 0 adds only the positions, 64 x H)."""
    big = {**MODEL, "vocab": 50000}
    tp, dp = 2, 2
    program = _program("gpt", f"tp={tp},pp=2,dp={dp},mb=1,zero=1", 8, big)
    held = (2 * BLOCK + 2 * H + 50000 * H) / tp
    assert program.device_params(1) == pytest.approx(held, rel=1e-12)
    assert program.device_params(0) == pytest.approx((2 * BLOCK + 50000 * H + 64 * H) / tp,
                                                     rel=1e-12)
    mem = device_memory(program)
    assert mem.stage == 1
    assert mem.params == pytest.approx(held * 2 + held * 4 / dp, rel=1e-12)
    assert mem.grads == pytest.approx(held * 4, rel=1e-12)
    assert mem.optimizer_state == pytest.approx(held * 8 / dp, rel=1e-12)
