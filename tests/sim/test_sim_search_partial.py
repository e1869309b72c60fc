"""The plan search with the dimensions of issue 11: plans on part of a machine (idle devices)
and uneven pipeline stages, against the enumeration of `plan_reference`, and the memory screen
against the compiled program's memory."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from plan_reference import compositions, every_plan

from dojo.compiler.mapping import device_count
from dojo.hardware import load_system
from dojo.plan.plan import Plan
from dojo.sim import session
from dojo.sim.memory import device_memory
from dojo.sim.search import _Screen, best_plan, plan_space
from dojo.sim.searchspace import bundle_plans
from dojo.sim.session import compile_model, model_shape, simulate_model
from dojo.sim.simulate import simulate
from dojo.sim.stagemem import stage_activations, stage_totals

TINY = {"layers": 3, "hidden": 64, "heads": 4, "ffn": 256, "seq": 64, "vocab": 512}


def test_compositions_are_every_split() -> None:
    assert compositions(3, 2) == [(0, 3), (1, 2), (2, 1), (3, 0)]
    assert len(compositions(5, 3)) == math.comb(7, 2)


def test_search_equals_every_plan_with_idle_devices_and_uneven_stages() -> None:
    """3 GPUs, 3 blocks, batch 4: no full-machine plan splits evenly (dp 3 does not divide 4,
    tp 3 not 4 heads, pp 2 not 3 blocks), so the space is idle devices and uneven stages. The
    search must return the fastest of every plan written here, each simulated on its own."""
    spec = load_system("a100-cluster:3")
    found = best_plan("gpt", TINY, spec, 4)
    times = {}
    for plan in every_plan(TINY, 3, 4):
        sim = simulate_model("gpt", TINY, spec, plan, 4)
        if sim.result.memory.fits:
            times[plan] = sim.result.step_time_s
    assert len(times) > 500
    best = min(times.values())
    assert found.best.step_time_s == pytest.approx(best, rel=1e-9)
    assert found.best.simulated.program.idle_devices == 3 - found.best.plan.devices
    idle = [p for p in times if p.devices < 3]
    uneven = [p for p in times if p.pp == 2]
    assert idle and uneven


MOE = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "ffn": 128, "expert_ffn": 96,
       "experts": 8, "top_k": 2, "seq": 32, "vocab": 256}


@pytest.mark.parametrize(("system", "batch", "name", "model"), [
    ("a100-cluster:3", 4, "gpt", TINY),
    ("tile", 6, "gpt", {**TINY, "layers": 5}),
    ("h100-cluster:4", 8, "moe", MOE),
])
def test_memory_screen_is_the_compiled_programs_memory(system: str, batch: int, name: str,
                                                       model: dict[str, int]) -> None:
    """The search drops plans by `stage_totals` before compiling them: it must be the compiled
    program's bytes (`device_memory`) for every plan of the space. It drops whole families
    (dp x tp x pp; x interleave x split) by bounds below every plan's bytes and step: a plan
    that fits must pass them, and the device bound must not exceed its simulated step."""
    spec = load_system(system)
    shape = model_shape(*session.captured(name, model, 1, None))
    screen = _Screen(name, model, spec, batch, None)
    checked = fitting = 0
    for plan in plan_space(shape, device_count(spec), batch, spec=spec):
        program, _ = compile_model(name, model, spec, plan, batch, derive=True)
        work = screen._work(plan)
        totals = stage_totals(work, plan, stage_activations(work, plan, batch),
                              screen._layout(plan))
        memory = device_memory(program)
        assert max(totals) == pytest.approx(memory.total, rel=1e-12), plan.text()
        split = Plan(dp=plan.dp, tp=plan.tp, pp=plan.pp, cp=plan.cp)
        family = replace(split, interleave=plan.interleave, stages=plan.stages,
                         zero=3 if plan.dp > 1 else 0)
        step = simulate(program).step_time_s
        assert screen._device_bound(split) <= step and screen._op_bound(split) <= step, plan.text()
        term = screen._mb_terms.get(screen._split_key(split), {}).get(plan.mb, 0.0)
        assert term <= screen._first_bound(plan) * (1 + 1e-12), plan.text()   # the mb skip
        assert screen._even_state(split) <= memory.total, plan.text()
        assert all(b <= t * (1 + 1e-12) for b, t in zip(screen._family_bytes(family), totals)), \
            plan.text()
        fitting += memory.fits
        checked += 1
    assert checked >= 100 and fitting >= 10


def _bundled(spec_name: str, name: str, model: dict[str, int], batch: int) -> list[Plan]:
    """Every plan the search's bundles hold with no time bound (worst = inf): each dp x tp x
    pp's groups (`_Screen.groups`), their bundles (`_Screen.plans`), their plans."""
    spec = load_system(spec_name)
    devices = device_count(spec)
    shape = model_shape(*session.captured(name, model, 1, None))
    screen = _Screen(name, model, spec, batch, None)
    queue, _ = screen.device_groups(shape, devices, "bf16", "full")
    out = []
    for *_, split in queue:
        for group in screen.groups(split, shape, devices):
            for _, _, bundle in screen.plans(group[3], shape, devices, math.inf):
                out.extend(bundle_plans(bundle))
    return out


def test_bundles_hold_the_spaces_plans_once_and_no_other() -> None:
    """The bundles hold no plan twice and none outside the reference enumeration less the
    settings the search's docstring omits as dominated or identical (overlap off; with dp = 1
    any ZeRO stage; with tp = 1 sp; with pp = 1 GPipe; `vp_group` with GPipe or written as
    pp), and every plan of that set they leave out does not fit memory (the compiled
    program's)."""
    spec = load_system("a100-cluster:3")
    got = _bundled("a100-cluster:3", "gpt", TINY, 4)
    assert len(got) == len(set(got))
    want = {p for p in every_plan(TINY, 3, 4)
            if p.overlap and (p.dp > 1 or p.zero == 0) and (p.tp > 1 or not p.sp)
            and (p.pp > 1 or p.schedule != "gpipe")
            and not (p.vp_group and (p.schedule == "gpipe" or p.vp_group == p.pp))}
    assert set(got) <= want
    assert len(got) > 200
    for plan in sorted(want - set(got), key=Plan.text):
        program, _ = compile_model("gpt", TINY, spec, plan, 4)
        assert not device_memory(program, chip_report=False).fits, plan.text()
