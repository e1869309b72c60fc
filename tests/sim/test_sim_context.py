"""Context parallelism (`cp=N`, ring attention): the plan vocabulary, traffic, memory, exposed
communication and FLOP per rank against closed forms; refusals in one line."""

from __future__ import annotations

import itertools
from importlib import resources
from pathlib import Path

import pytest

from dojo.cli.main import main
from dojo.compiler.context import exposed
from dojo.compiler.mapping import group_levels
from dojo.errors import ConfigError
from dojo.hardware.loader import load_system
from dojo.plan import parse_plan
from dojo.sim.memory import device_memory
from dojo.sim.session import simulate_model
from dojo.sim.simulate import chunk_times, device_model

# A small Llama (grouped-query attention: 8 heads, 4 kv heads of 8) at 256 tokens.
LLAMA = {"layers": 2, "hidden": 64, "heads": 8, "kv_heads": 4, "ffn": 160, "seq": 256,
         "vocab": 512}
SEQ = 256


def _sim(plan: str, devices: int, batch: int = 4, seq: int = SEQ, system: str = "h100-cluster"):
    spec = load_system(system, devices=devices)
    return simulate_model("llama", LLAMA, spec, parse_plan(plan), batch, seq)


def test_plan_text_round_trips_cp_and_counts_its_devices() -> None:
    plan = parse_plan("tp=8,cp=2,pp=2")
    assert plan.cp == 2 and plan.devices == 1 * 8 * 2 * 2 and plan.dp_cp == 2
    assert plan.text() == "dp=1,tp=8,pp=2,cp=2"
    assert parse_plan(plan.text()) == plan
    assert parse_plan(plan.text(full=True)) == plan
    assert "cp=" not in parse_plan("dp=2").text()   # the default stays out of the short form


def test_ring_traffic_per_rank_in_closed_form() -> None:
    """block = 2 (K, V) x seq/cp x kv_heads/tp x head_dim x 2 bytes (BF16) x mb; forward sends
    cp - 1 blocks per layer, backward twice that (K, V and dK, dV)."""
    for plan, cp, tp, mb in (("cp=4,mb=2", 4, 1, 2), ("cp=2,tp=2,mb=1", 2, 2, 1)):
        ring = _sim(plan, cp * tp).program.ring
        assert ring is not None and ring.cp == cp
        block = 2 * (SEQ // cp) * (4 // tp) * (64 // 8) * 2 * mb
        assert ring.block_bytes == block
        assert ring.forward_bytes == (cp - 1) * block
        assert ring.backward_bytes == 2 * (cp - 1) * block
        assert ring.buffer_bytes == 4 * block


def test_cp_ranks_sit_between_tp_and_dp() -> None:
    """Ranks are tp innermost, then cp, then dp (Megatron-LM): on DGX nodes of 8 GPUs, tp 4 x
    cp 2 stays on NVLink; tp 4 x cp 4 spans two nodes; gradients reduce over dp x cp ranks
    spaced tp apart."""
    inside = _sim("tp=4,cp=2,dp=2", 16).program
    assert [(lv.level, lv.members) for lv in inside.ring.levels] == [("server", 2)]
    across = _sim("tp=4,cp=4", 16, batch=2).program
    assert [(lv.level, lv.members) for lv in across.ring.levels] == [("server", 2),
                                                                     ("cluster", 2)]
    assert [(lv.level, lv.members) for lv in inside.grad_levels] == [("server", 2),
                                                                     ("cluster", 2)]
    assert inside.grad_levels == group_levels(inside.system, 4, 4)


def test_step_flops_are_the_whole_sequence_and_split_evenly() -> None:
    """cp ranks of seq/cp tokens do the step of the full sequence: the model FLOP of a cp = 2
    plan (captured at seq/2, attention run once per ring step) equal those of cp = 1 (captured
    at seq), and each rank does 1/cp of them. (Up to the few FLOP of the loss's scalar ops,
    which every rank runs whole: under 1e-6 of the step.)"""
    whole = _sim("dp=1", 1).program
    for cp in (2, 4):
        split = _sim(f"cp={cp}", cp).program
        assert split.model_flops == pytest.approx(whole.model_flops, rel=1e-6)
        rank = sum(o.flops for c in split.chunks for o in (*c.forward, *c.backward))
        alone = sum(o.flops for c in whole.chunks for o in (*c.forward, *c.backward))
        assert rank == pytest.approx(alone / cp, rel=1e-6)


def test_memory_per_rank_is_activations_over_cp_plus_ring_buffers() -> None:
    """Weights, gradients and optimizer state are those of cp = 1 (replicated over cp; ZeRO
    shards them over dp x cp); activations are 1/cp of cp = 1's plus 4 ring blocks (up to the
    loss's few scalar bytes, kept whole on every rank)."""
    one = device_memory(_sim("dp=1", 1).program)
    for cp in (2, 4):
        program = _sim(f"cp={cp}", cp).program
        mem = device_memory(program)
        block = 2 * (SEQ // cp) * 4 * 8 * 2
        assert (mem.params, mem.grads, mem.optimizer_state) == \
            (one.params, one.grads, one.optimizer_state)
        assert mem.activations == pytest.approx(one.activations / cp + 4 * block, abs=16)
    zero = device_memory(_sim("cp=2,zero=1", 2).program)
    assert zero.optimizer_state == pytest.approx(one.optimizer_state / 2, rel=1e-12)


def _slow_link(tmp_path: Path, nvlink: float) -> str:
    """The DGX H100 cluster with its NVLink at `nvlink` bytes/s per GPU."""
    text = (resources.files("dojo.hardware") / "systems" / "h100-cluster.toml").read_text()
    path = tmp_path / f"h100-{nvlink:g}.toml"
    path.write_text(text.replace("bytes_per_s = 450.0e9", f"bytes_per_s = {nvlink!r}"))
    return str(path)


def test_exposed_ring_time_is_transfer_beyond_each_step(tmp_path: Path) -> None:
    """Per layer, cp - 1 transfers each beside one ring step's attention kernel: exposed =
    (cp - 1) x max(0, transfer - step), the transfer latency + bytes / (link x efficiency)
    on the NVSwitch (2 hops); backward moves 2 blocks per step."""
    assert exposed(3, 5.0, 2.0) == 9.0 and exposed(3, 2.0, 5.0) == 0.0
    cp = 4
    for nvlink in (1e8, 450e9):
        sim = _sim(f"cp={cp}", cp, system=_slow_link(tmp_path, nvlink))
        program = sim.program
        dev = device_model(program)
        cal = dev.calibration
        ring = program.ring
        times = chunk_times(program, program.chunks[0], dev, sim.result.memory)
        layers = program.chunks[0].blocks
        latency = 2 * 0.7e-6 + cal.collective_latency_s
        for nbytes, ops, got in ((ring.block_bytes, ring.forward, times.cp_forward),
                                 (2 * ring.block_bytes, ring.backward, times.cp_backward)):
            transfer = latency + nbytes / (nvlink * cal.link_efficiency)
            step = sum(dev.op_time(o) for o in ops)
            assert got == pytest.approx(layers * (cp - 1) * max(0.0, transfer - step), rel=1e-9)
        if nvlink == 1e8:
            assert times.cp_forward > 0 and times.cp_backward > 0
            assert sim.result.breakdown_s["exposed_comm"] >= \
                sim.program.microbatches * (times.cp_forward + times.cp_backward)


def test_step_time_is_monotone(tmp_path: Path) -> None:
    """A faster ring link never slows the step; a longer sequence never speeds it up."""
    steps = [_sim("cp=4", 4, system=_slow_link(tmp_path, bw)).result.step_time_s
             for bw in (1e7, 1e8, 1e9, 1e10, 450e9)]
    assert all(a >= b for a, b in itertools.pairwise(steps)) and steps[0] > steps[-1]
    longer = [_sim("cp=2", 2, seq=s).result.step_time_s for s in (64, 128, 256)]
    assert all(a <= b for a, b in itertools.pairwise(longer))


@pytest.mark.parametrize(("argv", "needle"), [
    (["llama", "--plan", "cp=3", "--seq", "256"],
     "field 'cp' = 3: expected a sequence that cuts into 2 x cp = 6 equal chunks (causal load "
     "balancing): seq 256 / 6 = 42.6667"),
    (["llama", "--plan", "cp=2,dp=2", "--seq", "256"], "dp 2 x tp 1 x pp 1 x cp 2 = 4"),
    (["mlp", "--plan", "cp=2"], "field 'cp' = 2: expected 1 for model 'mlp'"),
    (["llama", "--plan", "cp=0", "--seq", "256"], "field 'cp' = 0"),
    (["llama", "--plan", "cp=2", "--seq", "512"],
     "field 'seq' = 512: expected an integer in [1, 256] (the model's context)"),
])
def test_bad_cp_is_one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str],
                                   needle: str) -> None:
    sets = [a for k, v in LLAMA.items() for a in ("--set", f"{k}={v}")] if argv[0] == "llama" \
        else []
    # enough devices for cp=3, so that its own check is the one that speaks
    system = "h100-cluster:3" if "cp=3" in argv else "h100-cluster:2"
    code = main(["simulate", argv[0], *sets, *argv[1:], "--system", system, "--batch", "4"])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1, err


def test_run_refuses_cp(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--model", "llama", "--plan", "cp=2", "--batch", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "field 'cp' = 2: expected 1: `dojo run` executes" in err


def test_local_seq_error_names_the_arithmetic() -> None:
    from dojo.compiler.context import local_seq

    assert local_seq(32768, 2) == 16384
    with pytest.raises(ConfigError, match=r"seq 100 / 8 = 12.5"):
        local_seq(100, 4)


def test_allgather_cp_exposes_its_collectives_and_holds_every_block() -> None:
    """cp_comm=allgather (Llama 3's CP): per layer an all-gather of K, V before attention, and in
    backward another and a reduce-scatter of dK, dV, all exposed. On one NVSwitch level a ring
    all-gather of cp blocks takes (cp - 1) (latency + block / (link x efficiency)); buffers are
    all cp blocks of K, V and of dK, dV."""
    cp = 4
    plan = parse_plan(f"cp={cp},cp_comm=allgather")
    assert plan.text() == f"dp=1,tp=1,pp=1,cp={cp},cp_comm=allgather"
    assert parse_plan(plan.text(full=True)) == plan
    sim = _sim(plan.text(), cp)
    program, ring = sim.program, sim.program.ring
    dev = device_model(program)
    cal = dev.calibration
    times = chunk_times(program, program.chunks[0], dev, sim.result.memory)
    layers = program.chunks[0].blocks
    gather = (cp - 1) * (2 * 0.7e-6 + cal.collective_latency_s
                         + ring.block_bytes / (450e9 * cal.link_efficiency))
    assert times.cp_forward == pytest.approx(layers * gather, rel=1e-9)
    assert times.cp_backward == pytest.approx(2 * layers * gather, rel=1e-9)
    assert ring.buffer_bytes == 2 * cp * ring.block_bytes
    p2p = _sim(f"cp={cp}", cp)
    assert sim.result.step_time_s > p2p.result.step_time_s   # the ring hides what this exposes


def test_pipeline_sends_a_ranks_tokens_across_dp_x_cp() -> None:
    """With cp a pipeline stage sends its seq/cp tokens of the residual stream (1/cp of cp=1's
    message), and the next stage sits tp x cp x dp ranks further on: on 8-GPU nodes, tp 2 x
    cp 2 x dp 2 = 8 puts the stages on different nodes."""
    one = _sim("tp=2,dp=2,pp=2", 8).program
    split = _sim("tp=2,cp=2,dp=2,pp=2", 16).program
    assert split.p2p.nbytes == one.p2p.nbytes / 2
    assert one.p2p.nbytes == 1 * SEQ * 64 * 2 / 2   # mb 1 x seq x hidden x BF16 / tp 2
    assert [(lv.level, lv.members) for lv in split.p2p.levels] == [("cluster", 2)]
    assert [(lv.level, lv.members) for lv in one.p2p.levels] == [("server", 2)]
