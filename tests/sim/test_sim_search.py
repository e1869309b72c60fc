"""The plan search (issue 14 item 2): its space, its bounds and its result against an independent
enumeration of every plan the vocabulary can write."""

from __future__ import annotations

import pytest
from plan_reference import every_plan

from dojo.compiler.mapping import device_count
from dojo.hardware import load_system
from dojo.models.zoo import MODELS
from dojo.sim import session
from dojo.sim.search import _Screen, best_plan, plan_space
from dojo.sim.session import compile_model, model_shape, simulate_model
from dojo.sim.simulate import simulate
from dojo.sim.stepbound import lower_bound

TINY = {"layers": 2, "hidden": 64, "heads": 4, "ffn": 256, "seq": 64, "vocab": 512}


@pytest.mark.parametrize("batch", [10, pytest.param(50, marks=pytest.mark.slow)])
def test_search_equals_every_plan_simulated(batch: int) -> None:
    """On 2 H100s the fastest plans run each replica's samples as micro-batches of 5 (batch 10)
    or 25 and 50 (batch 50), which the old (1, 2, 4, 8, 16) never offered. The search must return
    the fastest of all the plans the plan vocabulary writes, each simulated from its own
    capture, and beat every plan restricted to power-of-two micro-batches."""
    spec = load_system("h100-cluster:2")
    found = best_plan("gpt", TINY, spec, batch)
    times = {}
    for plan in every_plan(TINY, 2, batch):
        sim = simulate_model("gpt", TINY, spec, plan, batch)
        if sim.result.memory.fits:
            times[plan] = sim.result.step_time_s
    best = min(times.values())
    assert found.best.step_time_s == pytest.approx(best, rel=1e-9)
    assert times[found.best.plan] == pytest.approx(found.best.step_time_s, rel=1e-9)
    powers = min(t for p, t in times.items() if p.mb in (1, 2, 4, 8, 16))
    assert found.best.plan.mb not in (1, 2, 4, 8, 16) and best < powers * (1 - 1e-6)


@pytest.mark.parametrize(("system", "batch", "model"), [
    ("h100-cluster:2", 50, TINY),
    ("a100-cluster:4", 8, {**TINY, "layers": 4}),
    ("tile", 100, {**TINY, "layers": 4}),
])
def test_bounds_never_exceed_the_simulated_step(system: str, batch: int,
                                                model: dict[str, int]) -> None:
    """Both bounds of the branch and bound, for every plan of the space (pipelines with
    transfers, tp collectives, Dojo's D1 timer): below the simulated time."""
    spec = load_system(system)
    screen = _Screen("gpt", model, spec, batch, None)
    shape = model_shape(*session.captured("gpt", model, 1, None))
    checked = 0
    for plan in plan_space(shape, device_count(spec), batch):
        program, _ = compile_model("gpt", model, spec, plan, batch, derive=True)
        step = simulate(program).step_time_s
        assert screen._first_bound(plan) <= step * (1 + 1e-12), plan.text()
        assert lower_bound(program) <= step * (1 + 1e-9), plan.text()
        checked += 1
    assert checked >= 30


def test_space_has_every_micro_batch_that_divides_the_replica_batch() -> None:
    # 4 blocks, so dp=16 has a pipeline (pp=3 stages: 4 + embedding and head = 6 = 3 x 2)
    shape = model_shape(*session.captured("gpt", {**TINY, "layers": 4}, 1, None))
    space = list(plan_space(shape, 48, 1200))
    mbs = {p.mb for p in space if p.dp == 48}
    assert mbs == {1, 5, 25}
    assert {p.mb for p in space if p.dp == 16} == {1, 3, 5, 15, 25, 75}
    assert any(p.tp == 16 for p in space) is False        # 4 heads: tp divides 4
    assert {p.zero for p in space if p.dp > 1} == {0, 1, 2, 3}


@pytest.mark.parametrize("name", [
    "mlp", "gpt", *(pytest.param(n, marks=pytest.mark.slow)
                    for n in ("resnet18", "vit-b16", "llama", "occupancy"))])
def test_derived_graph_is_the_captured_graph(name: str) -> None:
    """The search extrapolates a graph at micro-batch b from the captures at 2 and 3 (checked at
    4); it must be the graph a capture at b gives, op for op and byte for byte."""
    small = dict(MODELS.get(name).small)
    derived, _ = session.graph_at(name, small, 6, None, derive=True)
    key = (name, tuple(sorted(small.items())), 6, None)
    session._CAPTURES.pop(key)
    captured, _ = session.captured(name, small, 6, None)
    assert derived == captured


@pytest.mark.parametrize("name", ["gpt", "deepseek-v3"])
def test_capture_from_the_kept_module_is_a_fresh_capture(name: str) -> None:
    """`session.captured` builds a model once and captures that module at every micro-batch
    (the search captures four); the graph must be the one a fresh build at that micro-batch
    gives, op for op and byte for byte (a capture that left the module changed would show)."""
    from dojo.capture import capture
    from dojo.models import build

    small = dict(MODELS.get(name).small)
    session.captured(name, small, 2, None)   # builds and keeps the module
    session._CAPTURES.pop((name, tuple(sorted(small.items())), 3, None), None)
    kept, _ = session.captured(name, small, 3, None)
    bundle = build(name, batch=3, device="meta", overrides=small)
    fresh = capture(bundle.model, bundle.example_inputs, bundle.loss_fn,
                    bundle.make_optimizer(bundle.model.parameters()), targets=bundle.targets,
                    name=name).graph
    assert session._MODULES[(name, tuple(sorted(small.items())))] is not bundle.model
    assert kept == fresh


LONG = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "ffn": 160, "seq": 8192,
        "vocab": 512}


def test_context_sizes_keep_4096_tokens_per_rank() -> None:
    """cp is tried in powers of two that divide the devices and cut the sequence into 2 cp
    chunks, down to MIN_CP_TOKENS = 4096 tokens per rank; never for models without sequences."""
    from dojo.sim.search import context_sizes

    assert context_sizes("llama", {**LONG, "seq": 32768}, None, 16) == (1, 2, 4, 8)
    assert context_sizes("llama", LONG, None, 16) == (1, 2)
    assert context_sizes("llama", LONG, 4096, 16) == (1,)
    assert context_sizes("llama", {**LONG, "seq": 32768}, None, 12) == (1, 2, 4)
    assert context_sizes("mlp", {}, None, 16) == (1,)


def test_search_with_cp_equals_every_plan_simulated() -> None:
    """With 8,192-token sequences on 2 H100s the space holds cp = 2 plans; the search returns
    the fastest plan of the whole space, each plan simulated from its own capture, and both
    bounds stay below every cp plan's simulated step."""
    from dojo.sim.search import exhaustive

    spec = load_system("h100-cluster:2")
    found = best_plan("llama", LONG, spec, 4)
    every = exhaustive("llama", LONG, spec, 4)
    assert found.best.step_time_s == pytest.approx(every.step_time_s, rel=1e-9)
    screen = _Screen("llama", LONG, spec, 4, None)
    shape = model_shape(*session.captured("llama", LONG, 1, None))
    cp_plans = list(plan_space(shape, 2, 4, cp=2))   # dp x tp x pp x cp 2 <= 2 devices
    assert cp_plans and all(p.cp == 2 for p in cp_plans)
    # the plans of the groups built: the rest were bounded out whole
    assert 0 < found.considered <= len(list(plan_space(shape, 2, 4))) + len(cp_plans)
    for plan in cp_plans:
        program, _ = compile_model("llama", LONG, spec, plan, 4, derive=True)
        step = simulate(program).step_time_s
        assert screen._first_bound(plan) <= step * (1 + 1e-12), plan.text()
        assert lower_bound(program) <= step * (1 + 1e-9), plan.text()
