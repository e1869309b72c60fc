"""The plan search over micro-batch groups `vp_group` (issue 14 item 2, issue 11): which N it
writes (the order's own deadlock rule), why N > pp is left out (Narayanan's bubble and the warm
phase, by simulation of the order itself), its bounds at every N against each plan compiled and
simulated, and a case whose best plan needs N < pp against every plan of `plan_reference`."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import replace
from pathlib import Path

import pytest

from dojo.cli.main import main
from dojo.hardware import load_system
from dojo.hardware.spec import SystemSpec
from dojo.plan.plan import Plan, group_runs
from dojo.sim import session
from dojo.sim.memory import device_memory, peak_in_flight
from dojo.sim.pipeline import (
    Span,
    group_chain_bound,
    makespan_bounds,
    ring_bound,
    ring_spans,
    run_pipeline,
)
from dojo.sim.search import _Screen, best_plan, exhaustive, plan_space
from dojo.sim.searchspace import group_sizes
from dojo.sim.session import compile_model, model_shape, simulate_model
from dojo.sim.simulate import simulate
from dojo.sim.stepbound import lower_bound


def _step(pp: int, virtual: int, micro: int, n: int, f: float = 1.0, b: float = 2.0) -> float:
    spans = run_pipeline(pp, virtual, micro, "interleaved",
                         lambda s, t: f if t[0] == "F" else b, 0.0, group=n)
    return max(s.end for s in spans)


def test_group_sizes_are_the_groups_whose_order_runs() -> None:
    """Where pp divides the micro-batches: N = pp first (0, the default), then every N < pp,
    larger first, that the order runs: each runs to the end in the pipeline simulation, and
    an N < pp left out deadlocks it (a real cycle with V = 3). None where pp does not divide
    them (not searched)."""
    assert group_sizes(4, 2, 8) == [0, 3, 2, 1]
    assert group_sizes(8, 2, 8) == [0, 5, 4, 3, 2, 1]   # 8 = 7 + 1 and 6 + 2 deadlock
    assert group_sizes(4, 2, 7) == [] and group_sizes(4, 1, 9) == [0]
    for pp in range(2, 7):
        for micro in range(pp, 3 * pp + 1, pp):
            sizes = group_sizes(pp, 3, micro)
            for n in range(1, pp):
                try:
                    run_pipeline(pp, 3, micro, "interleaved",
                                 lambda s, t: 1.0 if t[0] == "F" else 2.0, 0.1, group=n)
                    ran = True
                except RuntimeError:
                    ran = False
                assert (n in sizes) == (ran and group_runs(pp, micro, n)), (pp, micro, n)


def test_larger_groups_are_never_faster_nor_smaller_with_equal_chunks() -> None:
    """Every pp <= 6, V <= 4, m a multiple of pp up to 4 pp, every N > pp that runs: with equal
    chunk times (B = 2F and B = F) the step is at least N = pp's ((m V + pp - 1)(F + B),
    Narayanan's bubble), and with any saved bytes per chunk every stage holds at least as much
    as at N = pp."""
    rng = random.Random(5)
    checked = 0
    for pp in range(2, 7):
        for virtual in range(2, 5):
            saved = [rng.uniform(0.0, 5.0) for _ in range(pp * virtual)]
            for micro in range(pp, 4 * pp + 1, pp):
                for f, b in ((1.0, 2.0), (1.0, 1.0)):
                    base = _step(pp, virtual, micro, pp, f, b)
                    assert base == pytest.approx((micro * virtual + pp - 1) * (f + b))
                    for n in range(pp + 1, micro + 1):
                        if group_runs(pp, micro, n):
                            assert _step(pp, virtual, micro, n, f, b) >= base * (1 - 1e-12)
                            checked += 1
                for n in range(pp + 1, micro + 1):
                    if not group_runs(pp, micro, n):
                        continue
                    for s in range(pp):
                        more = peak_in_flight("interleaved", s, pp, micro, virtual, saved, n)
                        less = peak_in_flight("interleaved", s, pp, micro, virtual, saved, pp)
                        assert more >= less * (1 - 1e-12), (pp, virtual, micro, n, s)
    assert checked > 200


def test_larger_groups_can_win_without_whole_groups_of_pp() -> None:
    """Why N > pp is a restriction of the space, not a dominance claim: pp 3, V 3, 11
    micro-batches (not a multiple of pp), equal chunks: N = 4 takes 105 units of time, N = 3
    (a last group of 2) 109."""
    assert _step(3, 3, 11, 4) == pytest.approx(105.0)
    assert _step(3, 3, 11, 3) == pytest.approx(109.0)


def _random_run(rng: random.Random, pp: int, virtual: int, micro: int, n: int, schedule: str
                ) -> tuple[bool, list[float], list[float], float, list[Span]]:
    """(equal, F and B seconds per virtual stage, hop seconds, the simulated spans) of one
    random run: with probability 0.3 equal chunks (F = 1, B = 2, no hop), else random."""
    equal = rng.random() < 0.3
    f = [1.0 if equal else rng.uniform(0.2, 3.0) for _ in range(pp * virtual)]
    b = [2.0 if equal else rng.uniform(0.3, 6.0) for _ in range(pp * virtual)]
    hop = 0.0 if equal else rng.uniform(0.0, 0.5)
    spans = run_pipeline(pp, virtual, micro, schedule,
                         lambda s, t: (f if t[0] == "F" else b)[t[2] * pp + s], hop, group=n)
    return equal, f, b, hop, spans


def test_group_chain_bound_is_below_every_run() -> None:
    """3,000 random interleaved runs (pp <= 6, V <= 4, every N <= pp that runs, random task
    times per virtual stage and transfers): the chain bound is below the end of device 0's last
    task,
    and with N < 2 pp / 3 and B = 2F (the ring stalls) it is often 5 % above `makespan_bounds`
    (which holds for every order)."""
    rng = random.Random(3)
    above = 0
    for _ in range(3000):
        pp, virtual = rng.randint(2, 6), rng.randint(2, 4)
        micro = rng.randint(1, 4 * pp)
        n = rng.randint(1, pp)
        if not group_runs(pp, micro, n):
            continue
        equal, f, b, hop, spans = _random_run(rng, pp, virtual, micro, n, "interleaved")
        step = max(s.end for s in spans if s.stage == 0)
        bound = group_chain_bound(pp, micro, n, f, b, hop)
        assert bound <= step * (1 + 1e-12), (pp, virtual, micro, n)
        if equal and 3 * n < 2 * pp and micro >= 2 * n:
            ends, tails = makespan_bounds(pp, micro, f, b, 0.0)
            above += bound > max(e + t for e, t in zip(ends, tails)) * 1.05
    assert above > 20


def test_ring_spans_are_below_every_task_and_see_the_stalls() -> None:
    """1,500 random runs of the interleaved order (every N <= pp that runs), 1F1B and GPipe
    (pp <= 6, V <= 4, random task times and transfers): every task of every device starts and
    ends no later in `ring_spans` than in the pipeline simulation. On equal chunks (F = 1,
    B = 2) of the interleaved order with N < pp, where the ring stalls, device 0's last end is
    on average within 8 % of the simulated one and above the chain bound."""
    rng = random.Random(11)
    ring_ratio, chain_ratio = [], []
    for _ in range(1500):
        schedule = rng.choice(["interleaved", "interleaved", "1f1b", "gpipe"])
        pp, virtual = rng.randint(2, 6), 1 if schedule == "1f1b" else rng.randint(2, 4)
        micro, n = rng.randint(1, 4 * pp), rng.randint(1, pp) if schedule == "interleaved" else 0
        if n and not group_runs(pp, micro, n):
            continue
        equal, f, b, hop, spans = _random_run(rng, pp, virtual, micro, n, schedule)
        simulated = {(s.stage, s.kind, s.micro, s.chunk): s for s in spans}
        for stage in range(pp):
            for low in ring_spans(pp, micro, n, f, b, hop, stage, schedule):
                real = simulated[(stage, low.kind, low.micro, low.chunk)]
                assert low.start <= real.start * (1 + 1e-12) + 1e-12, (pp, micro, n, stage)
                assert low.end <= real.end * (1 + 1e-12), (pp, virtual, micro, n, stage)
        if equal and schedule == "interleaved" and n < pp:
            end = max(s.end for s in spans if s.stage == 0)
            ring_ratio.append(ring_bound(pp, micro, n, f, b) / end)
            chain_ratio.append(group_chain_bound(pp, micro, n, f, b) / end)
    assert len(ring_ratio) > 30
    assert sum(ring_ratio) / len(ring_ratio) > 0.92
    assert sum(ring_ratio) > sum(chain_ratio) * 1.03


SYSTEMS = Path(__file__).parents[2] / "src" / "dojo" / "hardware" / "systems"
SMALL = {"layers": 6, "hidden": 64, "heads": 4, "ffn": 256, "seq": 512, "vocab": 512}


def with_capacity(spec: SystemSpec, capacity: float) -> SystemSpec:
    """`spec` with each device's memory cut to `capacity` bytes, all of it for tensors (no CUDA
    reserve, hence no NCCL buffers either: `memory.capacity`)."""
    memory = {k: dataclasses.replace(m, bytes=capacity, reserved_bytes=0.0)
              for k, m in spec.leaf.memory.items()}
    return dataclasses.replace(spec, leaf=dataclasses.replace(spec.leaf, memory=memory))


def test_bounds_hold_at_every_group() -> None:
    """Every interleaved plan with dp = 1 of the 6-block model on 4 H100s, batch 8 (pp 4:
    N = 4 (0), 3, 2, 1), compiled and simulated: the first bound, the order bound and the
    compiled bound below the step; the stage bytes the search screens equal to the compiled
    program's, and the family and group screens below them."""
    spec, batch = load_system("h100-cluster:4"), 8
    shape = model_shape(*session.captured("gpt", SMALL, 1, None))
    screen = _Screen("gpt", SMALL, spec, batch, None)
    groups = set()
    for plan in plan_space(shape, 4, batch, spec=spec):
        if plan.schedule != "interleaved" or plan.dp > 1:
            continue
        program, _ = compile_model("gpt", SMALL, spec, plan, batch, derive=True)
        memory = device_memory(program)
        step = simulate(program).step_time_s
        assert screen._first_bound(plan) <= step * (1 + 1e-12), plan.text()
        assert screen._order_bound(plan) <= step * (1 + 1e-12), plan.text()
        assert lower_bound(program) <= step * (1 + 1e-9), plan.text()
        totals = [a + b for a, b in zip(screen._stage_state(plan),
                                        screen._stage_activations(plan))]
        assert max(totals) == pytest.approx(memory.total, rel=1e-12), plan.text()
        family = Plan(dp=plan.dp, tp=plan.tp, pp=plan.pp, interleave=plan.interleave,
                      stages=plan.stages, zero=3 if plan.dp > 1 else 0)
        assert max(screen._family_bytes(family, plan.mb)) <= memory.total * (1 + 1e-12)
        least = screen._least_activations(replace(plan, vp_group=0, zero=0))
        state = screen._least_state(family)
        assert all(st + a <= t * (1 + 1e-12) for st, a, t in zip(state, least, totals)), \
            plan.text()
        groups.add(plan.vp_group)
    assert groups == {0, 3, 2, 1}


# The 6-block model with a vocabulary of 128: the last stage's copy of the tied embedding
# (V x H, weights, gradients and Adam state) stays small beside a block, so the stage that binds
# is the first, whose activations in flight a smaller group N holds fewer of (with 512 the last
# stage binds, and N changes nothing there).
NARROW = {**SMALL, "vocab": 128}
NARROW_BYTES = 3.1e6


def test_search_finds_a_plan_that_fits_only_with_a_smaller_group() -> None:
    """On 4 H100s cut to 3.1 MB each, batch 8 of the 6-block model: the best plan needs
    N < pp (at N = pp it does not fit), and it is the best of every plan of the space
    simulated one by one (`search.exhaustive`)."""
    spec, batch = with_capacity(load_system("h100-cluster:4"), NARROW_BYTES), 8
    found = best_plan("gpt", NARROW, spec, batch, top=1)
    every = exhaustive("gpt", NARROW, spec, batch)
    assert found.best.step_time_s == pytest.approx(every.step_time_s, rel=1e-9)
    assert 0 < found.best.plan.vp_group < found.best.plan.pp
    default = replace(found.best.plan, vp_group=0)
    assert not simulate_model("gpt", NARROW, spec, default, batch).result.memory.fits


def test_plan_and_simulate_print_the_group(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    """`dojo plan` names the best plan's N (not the default), and so does `dojo simulate`'s
    plan line."""
    sets = [x for k, v in NARROW.items() for x in ("--set", f"{k}={v}")]
    system = tmp_path / "small.toml"
    text = (SYSTEMS / "h100-cluster.toml").read_text()
    cut = {"bytes = 85520809984.0": f"bytes = {NARROW_BYTES}",
           "reserved_bytes = 1124073472.0": "reserved_bytes = 0.0"}
    for old, new in cut.items():   # the same cut as `with_capacity`
        assert old in text
        text = text.replace(old, new)
    system.write_text(text)
    assert main(["plan", "gpt", *sets, "--system", str(system), "--devices", "4", "--batch",
                 "8", "--top", "1"]) == 0
    best = capsys.readouterr().out.splitlines()[0]
    assert best.startswith("best: ") and ",vp_group=1" in best, best
    plan = "dp=2,pp=2,mb=1,interleave=2,recompute=full,vp_group=1"
    assert main(["simulate", "gpt", *sets, "--system", "h100-cluster:4", "--batch", "8",
                 "--plan", plan]) == 0
    assert "vp_group=1" in capsys.readouterr().out


MOE = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "ffn": 128, "expert_ffn": 96,
       "experts": 8, "top_k": 2, "seq": 32, "vocab": 256}


def test_screen_counts_whole_experts_under_etp_1() -> None:
    """Every plan of a small MoE space with tp and ep > 1, each also with etp=1 (the experts
    whole on every tp rank, `replicated.with_whole_experts`), through one screen in turn:
    the stage bytes the search screens are the compiled program's, the family screen and the
    first bound stay below each plan's bytes and step."""
    spec, batch = load_system("h100-cluster:4"), 8
    shape = model_shape(*session.captured("moe", MOE, 1, None))
    screen = _Screen("moe", MOE, spec, batch, None)
    checked = 0
    for base in plan_space(shape, 4, batch, spec=spec):
        if base.tp == 1 or base.ep == 1:
            continue
        for plan in (base, replace(base, etp=1)):
            program, _ = compile_model("moe", MOE, spec, plan, batch, derive=True)
            memory = device_memory(program)
            totals = [a + b for a, b in zip(screen._stage_state(plan),
                                            screen._stage_activations(plan))]
            assert max(totals) == pytest.approx(memory.total, rel=1e-12), plan.text()
            family = Plan(dp=plan.dp, tp=plan.tp, pp=plan.pp, interleave=plan.interleave,
                          stages=plan.stages, zero=3, etp=plan.etp)
            assert max(screen._family_bytes(family, plan.mb)) <= memory.total * (1 + 1e-12)
            assert screen._first_bound(plan) <= simulate(program).step_time_s * (1 + 1e-12)
            checked += plan.etp
    assert checked >= 10
