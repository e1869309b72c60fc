"""Expert parallelism (`ep`) against closed forms: all-to-all bytes and time, expert memory
over ep, the experts' gradient group, imbalance and capacity, and the plan's errors."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from dojo.compiler.experts import MoeLayout, ep_gemm, param_groups, sent_bytes
from dojo.compiler.mapping import GroupLevel
from dojo.compiler.work import OpCost
from dojo.errors import ConfigError
from dojo.hardware import load_system
from dojo.plan.plan import parse_plan
from dojo.sim.collectives import collective_time
from dojo.sim.memory import device_memory
from dojo.sim.session import compile_model, simulate_model
from dojo.sim.simulate import collective, device_model

H, F, E, K, LAYERS, SEQ = 64, 96, 8, 2, 4, 32
MOE = {"layers": LAYERS, "hidden": H, "heads": 4, "kv_heads": 2, "ffn": 128, "expert_ffn": F,
       "experts": E, "top_k": K, "seq": SEQ, "vocab": 256}
EXPERT_PARAMS = LAYERS * 3 * E * H * F        # routed experts, whole model


def _program(plan: str, system: str = "h100-cluster:16", batch: int = 32, **over: object):
    spec = load_system(system)
    return compile_model("moe", {**MOE, **over}, spec, parse_plan(plan), batch)[0]


def test_all_to_all_bytes_per_rank_closed_form() -> None:
    mb, ep = 2, 4
    program = _program(f"dp=16,ep={ep},mb={mb}")
    tokens = mb * SEQ
    per_dispatch = tokens * K * H * 2           # BF16 activations
    (chunk,) = program.chunks
    a2a_f = [c for c in chunk.tp_forward if c.kind == "all_to_all"]
    a2a_b = [c for c in chunk.tp_backward if c.kind == "all_to_all"]
    # dispatch + combine per MoE layer, forward and backward
    assert len(a2a_f) == len(a2a_b) == 2 * LAYERS
    assert {c.nbytes for c in a2a_f + a2a_b} == {per_dispatch}
    assert sent_bytes(a2a_f[0].nbytes, ep) == tokens * K * H * 2 * (ep - 1) / ep
    # the ep group: ep consecutive data-parallel ranks inside one 8-GPU server (NVLink)
    (level,) = a2a_f[0].levels
    assert (level.level, level.members) == ("server", ep)
    dev = device_model(program)
    cal = dev.calibration
    want = (ep - 1) * (level.latency_s + cal.collective_latency_s) + \
        per_dispatch * (ep - 1) / ep / (level.bytes_per_s * cal.link_efficiency)
    assert collective(program, dev, "all_to_all", per_dispatch, a2a_f[0].levels) == \
        pytest.approx(want)
    full = _program(f"dp=16,ep={ep},mb={mb},recompute=full")
    assert sum(c.kind == "all_to_all" for c in full.chunks[0].tp_recompute) == 2 * LAYERS
    # op-level recompute: replaying the expert GEMMs (ops:mm keeps only the linears) replays
    # the dispatch and combine; keeping every matmul output (matmuls) does not
    drop = _program(f"dp=16,ep={ep},mb={mb},recompute=ops:mm")
    keep = _program(f"dp=16,ep={ep},mb={mb},recompute=matmuls")
    assert sum(c.kind == "all_to_all" for c in drop.chunks[0].tp_recompute) == 2 * LAYERS
    assert not any(c.kind == "all_to_all" for c in keep.chunks[0].tp_recompute)


def test_pairwise_all_to_all_over_two_levels() -> None:
    inner = GroupLevel("server", "nvlink", 8, 400e9, 0.0, "switch")
    outer = GroupLevel("cluster", "ib", 4, 50e9, 0.0, "fat_tree")
    s = 3.2e9
    t, algo = collective_time("all_to_all", s, (inner, outer), 1.0, 0.0)
    # 7 of 32 shares stay in the server, 24 cross InfiniBand; both move at once
    assert algo == "pairwise"
    assert t == pytest.approx(max(s * 7 / 32 / 400e9, s * 24 / 32 / 50e9))
    ring = 31 / 32 * s / 50e9
    assert t < ring


def test_expert_memory_divides_by_ep_and_zero_shards_over_dp_over_ep() -> None:
    base = device_memory(_program("dp=16,mb=2"))
    split = device_memory(_program("dp=16,ep=8,mb=2"))
    # BF16 weights (2) + FP32 master (4) per parameter; 7/8 of the experts leave the rank
    assert base.params - split.params == pytest.approx(EXPERT_PARAMS * 7 / 8 * 6)
    assert base.grads - split.grads == pytest.approx(EXPERT_PARAMS * 7 / 8 * 4)
    assert base.optimizer_state - split.optimizer_state == pytest.approx(EXPERT_PARAMS * 7 / 8
                                                                         * 8)
    # ZeRO-1: the experts' 1/ep is sharded over dp / ep ranks: exp / dp per rank either way
    z0 = device_memory(_program("dp=16,mb=2,zero=1"))
    z8 = device_memory(_program("dp=16,ep=8,mb=2,zero=1"))
    assert z0.optimizer_state == pytest.approx(z8.optimizer_state)
    assert z0.params - z8.params == pytest.approx(EXPERT_PARAMS * 7 / 8 * 2)


def test_expert_gradients_reduce_over_dp_over_ep() -> None:
    program = _program("dp=16,ep=4,mb=2", system="h100-cluster:16")
    dense, experts = param_groups(program, 0)
    assert experts[0] == pytest.approx(EXPERT_PARAMS / 4)
    assert experts[2] == 16 // 4 and dense[2] == 16
    assert math.prod(g.members for g in experts[1]) == 4     # ranks 0, 4, 8, 12
    assert math.prod(g.members for g in dense[1]) == 16
    # stride ep = 4 over 8-GPU servers: 2 per server, 2 servers
    assert [(g.level, g.members) for g in experts[1]] == [("server", 2), ("cluster", 2)]
    (one,) = param_groups(_program("dp=16,mb=2"), 0)
    assert one[0] == pytest.approx(dense[0] + EXPERT_PARAMS)


def _step(plan: str, **over: object) -> float:
    spec = load_system("h100-cluster:16")
    return simulate_model("moe", {**MOE, **over}, spec, parse_plan(plan), 64).result.step_time_s


def test_step_time_monotone_in_imbalance_and_capacity() -> None:
    steps = [_step(f"dp=16,ep=4,mb=2,imbalance={i}") for i in (1.0, 1.5, 2.0, 3.0)]
    assert steps == sorted(steps) and steps[0] < steps[-1]
    caps = [_step("dp=16,ep=4,mb=2", capacity=c) for c in (1.0, 1.25, 2.0)]
    assert caps == sorted(caps) and caps[0] < caps[-1]


def test_imbalance_scales_a2a_bytes_and_adds_expert_work() -> None:
    even = _program("dp=16,ep=4,mb=2")
    skew = _program("dp=16,ep=4,mb=2,imbalance=1.5")
    a2a = [c.nbytes for c in skew.chunks[0].tp_forward if c.kind == "all_to_all"]
    assert set(a2a) == {1.5 * 2 * SEQ * K * H * 2}
    extra = sum(o.flops for o in skew.chunks[0].forward) - sum(o.flops
                                                               for o in even.chunks[0].forward)
    # half again the expert GEMMs' forward: 3 GEMMs of E x C x H x F per layer, C = T k / E
    c = math.ceil(2 * SEQ * K / E)
    gemm = 2 * E * c * H * F
    assert extra == pytest.approx(0.5 * 3 * gemm * LAYERS)


def test_expert_gemms_under_ep_are_bigger_and_read_fewer_weights() -> None:
    """Per rank: experts / ep batches of ep x C rows, the same FLOP, 1/ep of the weights."""
    ep, c = 4, math.ceil(2 * SEQ * K / E)
    local = [o for o in _program("dp=16,mb=2").chunks[0].forward if "bmm" in o.target]
    split = [o for o in _program(f"dp=16,ep={ep},mb=2").chunks[0].forward if "bmm" in o.target]
    assert len(local) == len(split) == 3 * LAYERS
    for a, b in zip(local, split):
        assert a.shape[:2] == (E, c) and b.shape == (E // ep, ep * c, a.shape[2])
        assert b.flops == a.flops == 2 * E * c * H * F
        # BF16 operands: tokens in, the weight (E x H x F) once, the output
        out = E * c * a.shape[2] * 2
        assert a.bytes == E * c * (H + F) * 2 + E * H * F * 2
        assert b.bytes == a.bytes - E * H * F * 2 * (ep - 1) / ep
        assert a.out_bytes == b.out_bytes == out
    # At DeepSeek-V3's shapes (256 experts of 7168 x 2048, 128 rows each at 4,096 tokens) one
    # expert GEMM reads 7.5 GB of weights for 0.96 TFLOP: memory-bound on an H100 (3.35 TB/s
    # against 989 TFLOP/s). Over ep = 64 a rank runs 4 experts x 8,192 rows: compute-bound.
    big = MoeLayout(experts=256, top_k=8, hidden=7168, tokens=4096, block_layers=1,
                    outer_layers=0, block_params=3 * 256 * 7168 * 2048, outer_params=0,
                    width=2048, rows=128)
    nbytes = (256 * 128 * (7168 + 2048) + 256 * 7168 * 2048) * 2.0
    gemm = OpCost("matrix", 2.0 * 256 * 128 * 7168 * 2048, nbytes, "aten.bmm.default",
                  (256, 128, 2048), 256 * 128 * 2048 * 2.0)
    spread = ep_gemm(gemm, big, 64, 1, 0.5)
    assert spread.shape == (4, 8192, 2048)
    dev = device_model(_program("dp=16,mb=2"))
    weights_alone = 256 * 7168 * 2048 * 2 / dev.mem_bytes_per_s
    assert dev.op_time(gemm) > weights_alone
    # compute-bound: the tensor-core time exceeds streaming all its operands
    assert dev.matrix_compute_time(spread.flops, spread.shape) > spread.bytes / dev.mem_bytes_per_s
    assert dev.op_time(spread) < 0.7 * dev.op_time(gemm)


def test_plan_text_and_errors_show_arithmetic() -> None:
    plan = parse_plan("dp=16,ep=4,imbalance=1.2")
    assert "ep=4" in plan.text() and "imbalance=1.2" in plan.text()
    assert "ep" not in parse_plan("dp=16").text()
    spec = load_system("h100-cluster:16")
    cases = [("dp=16,ep=3", "dp 16 / ep 3 = 5.33"),
             ("dp=16,ep=16", "experts = 8 (8 / 16 = 0.5)")]
    for text, shown in cases:
        with pytest.raises(ConfigError, match=shown.replace("(", r"\(").replace(")", r"\)")):
            simulate_model("moe", MOE, spec, parse_plan(text), 64)
    with pytest.raises(ConfigError, match="the model has no routed experts"):
        simulate_model("llama", {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2,
                                 "ffn": 128, "seq": 32, "vocab": 256}, spec,
                       parse_plan("dp=16,ep=2"), 64)
    dense = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "ffn": 128, "seq": 32,
             "vocab": 256}
    for extra, field_name in (("etp=1", "etp"), ("dispatcher=flex", "dispatcher")):
        # an expert setting on a dense model did nothing and was accepted
        with pytest.raises(ConfigError, match=f"'{field_name}'.*no routed experts"):
            simulate_model("llama", dense, spec, parse_plan(f"dp=16,{extra}"), 64)
    with pytest.raises(ConfigError, match="'etp' = 3: expected 0 or 2"):
        simulate_model("moe", MOE, spec, parse_plan("dp=8,tp=2,etp=3"), 64)
    with pytest.raises(ConfigError, match="imbalance"):
        parse_plan("dp=16,ep=2,imbalance=0.5")
    assert replace(plan, ep=1).ep == 1


def test_cli_bad_ep_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from dojo.cli.main import main

    sets = [x for k, v in MOE.items() for x in ("--set", f"{k}={v}")]
    code = main(["simulate", "moe", "--system", "h100-cluster:16", "--plan", "dp=16,ep=3",
                 "--batch", "64", *sets])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "ep" in err and "dp 16 / ep 3" in err


def test_search_tries_ep_and_equals_every_plan_simulated() -> None:
    """On 4 H100s the space of a small MoE model holds ep = 1, 2, 4 wherever ep divides dp;
    the search returns the fastest plan of the whole space (each plan simulated from its own
    capture), and both bounds stay below every ep plan's simulated step."""
    from dojo.sim import session
    from dojo.sim.search import _Screen, best_plan, exhaustive, plan_space
    from dojo.sim.session import model_shape
    from dojo.sim.simulate import simulate
    from dojo.sim.stepbound import lower_bound

    small = {**MOE, "layers": 2}
    spec = load_system("h100-cluster:4")
    shape = model_shape(*session.captured("moe", small, 1, None))
    space = list(plan_space(shape, 4, 8))
    assert {(p.dp, p.ep) for p in space} >= {(4, 1), (4, 2), (4, 4), (2, 2), (1, 1)}
    assert all(p.dp % p.ep == 0 for p in space)
    found = best_plan("moe", small, spec, 8)
    every = exhaustive("moe", small, spec, 8)
    assert found.best.step_time_s == pytest.approx(every.step_time_s, rel=1e-9)
    screen = _Screen("moe", small, spec, 8, None)
    for plan in (p for p in space if p.ep > 1):
        program, _ = compile_model("moe", small, spec, plan, 8, derive=True)
        step = simulate(program).step_time_s
        assert screen._first_bound(plan) <= step * (1 + 1e-12), plan.text()
        assert lower_bound(program) <= step * (1 + 1e-9), plan.text()
