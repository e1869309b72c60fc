"""Overlap per kind against closed forms: the data-parallel reduction bucket by bucket (only the
last bucket exposed once the communication keeps up), the reduction dtype (bytes on the wire and
in the buffers), and tensor-parallel collectives hidden behind their GEMMs."""

from __future__ import annotations

import pytest

from dojo.errors import ConfigError
from dojo.hardware.loader import load_system
from dojo.plan.plan import parse_plan
from dojo.sim.memory import state_memory
from dojo.sim.overlap import buckets, fifo_end, hidden_pairs
from dojo.sim.session import compile_model
from dojo.sim.simulate import collective, device_model, simulate

MODEL = {"layers": 8, "hidden": 512, "heads": 8, "seq": 512, "vocab": 512, "ffn": 2048}


def test_fifo_exposes_only_the_last_bucket_when_comm_keeps_up() -> None:
    # 8 buckets ready every 1 s over [0, 8]; each takes 0.5 s to reduce: the stream keeps up,
    # so it ends one bucket after the backward
    ready = [(r, 0.5) for r, _ in buckets([1.0] * 8, 0.0, 8.0)]
    assert [r for r, _ in ready] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    assert fifo_end(ready) == pytest.approx(8.5)
    # 3 s per bucket: communication-bound, the stream runs from the first bucket on
    assert fifo_end([(r, 3.0) for r, _ in ready]) == pytest.approx(1.0 + 8 * 3.0)


def test_buckets_are_ready_in_proportion_to_parameters() -> None:
    assert buckets([1.0, 3.0], 10.0, 14.0) == [(11.0, 1.0), (14.0, 3.0)]


def _program(plan: str, devices: int):  # type: ignore[no-untyped-def]
    spec = load_system("h100-cluster", devices=devices)
    return compile_model("gpt", MODEL, spec, parse_plan(plan), 64)[0]


@pytest.mark.parametrize("plan", ["dp=4,pp=2,mb=8", "dp=4,pp=2,mb=4,interleave=2"])
def test_exposed_dp_reduction_is_the_last_bucket_per_stage(plan: str) -> None:
    """Each stage's device ends its backward with the last micro-batch of its first virtual
    stage (chunk c = stage); its buckets: one per block, then (stage 0) the embedding's, ready
    in proportion to the parameters done. Here the reduction keeps up with the backward, so a
    stage whose last bucket is a block exposes exactly that bucket; on stage 0 the embedding's
    small bucket comes so soon after the last block's that it waits for it:
    exposed = max(r_block + t_block, end) + t_embedding - end. Then both stages (the first and
    last) all-reduce gpt's tied embedding gradient, V x H / tp FP32 elements, once both are
    done."""
    program = _program(plan, 8)
    dev = device_model(program)
    result = simulate(program)
    block, pre = float(program.work.block.params), float(program.work.pre.params)

    def t(params: float) -> float:
        return collective(program, dev, "all_reduce", params / program.plan.tp * 4.0,
                          program.grad_levels)

    ends = []
    for stage in range(2):
        last = max((s for s in result.spans if s.stage == stage and s.kind == "B"),
                   key=lambda s: s.end)
        assert last.chunk == 0
        if stage == 1:
            ends.append(last.end + t(block))
            continue
        blocks = program.chunks[0].blocks * block
        ready = last.start + (last.end - last.start) * blocks / (blocks + pre)
        exposed = max(ready + t(block), last.end) + t(pre) - last.end
        assert t(pre) <= exposed < t(pre) + t(block)
        ends.append(last.end + exposed)
    vocab, hidden = MODEL["vocab"], MODEL["hidden"]
    tied = collective(program, dev, "all_reduce", vocab * hidden / program.plan.tp * 4.0,
                      program.tied.levels)
    for stage in range(2):
        assert result.sync_spans[stage][2] == pytest.approx(max(ends) + tied, rel=1e-9)


def test_grad_reduce_sets_wire_and_buffer_bytes() -> None:
    fp32, bf16 = (_program(f"dp=8,mb=8,overlap=off,grad_reduce={g}", 8) for g in ("fp32",
                                                                                  "bf16"))
    dev = device_model(fp32)
    grads = fp32.device_params(0)
    t32, t16 = (simulate(p).sync_spans[0] for p in (fp32, bf16))
    assert t32[2] - t32[1] == pytest.approx(collective(fp32, dev, "all_reduce", 4.0 * grads,
                                                       fp32.grad_levels))
    assert t16[2] - t16[1] == pytest.approx(collective(bf16, dev, "all_reduce", 2.0 * grads,
                                                       bf16.grad_levels))
    assert state_memory(parse_plan("grad_reduce=bf16"), 1e9, 8.0)[1] == 2e9
    assert state_memory(parse_plan("grad_reduce=auto"), 1e9, 8.0)[1] == 4e9  # bf16: FP32 grads


def test_tp_overlap_hides_up_to_the_gemm() -> None:
    # c = 1 s beside g = 3 s on tp = 4: hidden min(1, 3 x 3/4) = 1, paying 10 % of SMs
    assert hidden_pairs([(1.0, 0.1)], [3.0], 4) == pytest.approx(0.1)
    # c = 5 s beside g = 2 s on tp = 2: hidden 1 s, 4 s exposed
    assert hidden_pairs([(5.0, 0.0)], [2.0], 2) == pytest.approx(4.0)
    # the longest collective takes the longest GEMM; one without a GEMM is exposed whole
    assert hidden_pairs([(1.0, 0.0), (2.0, 0.0), (0.5, 0.0)], [4.0, 1.0], 2) == \
        pytest.approx(0.0 + (1.0 - 0.5) + 0.5)


def test_tp_overlap_in_a_step() -> None:
    on, off = (_program(f"tp=4,sp=on,dp=2,mb=2,tp_overlap={v}", 8) for v in ("on", "off"))
    r_on, r_off = simulate(on), simulate(off)
    assert r_on.breakdown_s["compute"] == pytest.approx(r_off.breakdown_s["compute"])
    assert r_on.breakdown_s["exposed_comm"] < r_off.breakdown_s["exposed_comm"]
    with pytest.raises(ConfigError, match="tp_overlap"):
        parse_plan("tp=4,tp_overlap=on")
