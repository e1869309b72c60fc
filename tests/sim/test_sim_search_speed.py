"""The plan search's shortcuts (issue 11 item 7) against the computation they replace, over
every plan of small spaces: the first bound taken per kind of chunk against the bound of
`pipeline.makespan_bounds` on every virtual stage's times (summed chunk by chunk, which the
search's per-virtual-stage times of a dense plan equal exactly); the memory screen's bisection over
mb against the screen asked of every mb; each distinct chunk timed once against every chunk
timed."""

from __future__ import annotations

import pytest

from dojo.compiler.mapping import device_count
from dojo.hardware import load_system
from dojo.plan.plan import Plan, plan_split
from dojo.sim import session
from dojo.sim.memory import device_memory
from dojo.sim.pipeline import makespan_bounds
from dojo.sim.search import _Screen, plan_space
from dojo.sim.searchspace import all_to_all_parts, chunk_parts, divisors
from dojo.sim.session import compile_model, model_shape
from dojo.sim.simulate import all_chunk_times, chunk_times, device_model, simulate
from dojo.sim.timebounds import SAFETY, Parts, Profile

DENSE = {"layers": 5, "hidden": 64, "heads": 4, "ffn": 256, "seq": 64, "vocab": 512}
MOE = {"layers": 3, "hidden": 64, "heads": 4, "kv_heads": 2, "ffn": 128, "expert_ffn": 96,
       "experts": 8, "top_k": 2, "seq": 32, "vocab": 256}


def _every_stage_times(screen: _Screen, plan: Plan) -> Parts:
    """Every virtual stage's times as `searchspace.chunk_parts` sums them, chunk by chunk, and
    with ep the all-to-alls `searchspace.all_to_all_parts` adds chunk by chunk (the search's
    `_chunk_times` maps per-kind times instead)."""
    work = screen._work(plan)
    tps = screen._tp_sums(plan, work) if plan.tp > 1 and not plan.tp_overlap else None
    split = plan_split(plan, work.repeat) if work.block else None
    chunks = plan.pp * plan.interleave
    times = chunk_parts(screen._section_sums(plan), tps, split, chunks, plan.recompute)
    layout = screen._layout(plan)
    if layout is None or plan.ep == 1:
        return times
    cal = screen._device(plan.precision, plan.attn).calibration
    parts = all_to_all_parts(screen.args[2], cal, plan, work, layout, split, chunks)
    return (times[0], [b + r for b, r in zip(times[1], parts[2])],
            [f + a for f, a in zip(times[2], parts[0])],
            [b + a for b, a in zip(times[3], parts[1])])


def _every_stage_bound(screen: _Screen, plan: Plan) -> float:
    """The first bound as the search took it before kinds: every virtual stage's times,
    ZeRO 3's stream per virtual stage, `makespan_bounds` without transfers."""
    f_in, b_in, f_out, b_out = _every_stage_times(screen, plan)
    assert screen._chunk_times(plan) == (f_in, b_in, f_out, b_out), plan.text()
    stream = screen._stream(plan)
    fwd = [max(a, s) + c for a, s, c in zip(f_in, stream, f_out)]
    bwd = [max(a, s) + c for a, s, c in zip(b_in, stream, b_out)]
    ends, tails = makespan_bounds(plan.pp, screen.args[3] // (plan.dp * plan.mb), fwd, bwd, 0.0)
    return max(e + t for e, t in zip(ends, tails)) * SAFETY


@pytest.mark.parametrize(("model", "overrides", "system", "batch"), [
    ("gpt", DENSE, "a100-cluster:8", 16),
    ("moe", MOE, "h100-cluster:4", 8),
])
def test_first_bound_per_kind_is_the_bound_per_virtual_stage(
        model: str, overrides: dict[str, int], system: str, batch: int) -> None:
    """Pipelines of up to 7 virtual stages with uneven splits, interleaving, ZeRO 3's stream,
    tp collectives and (MoE) all-to-alls with ep: the same bound to rounding, and below the
    simulated step of a sample of them."""
    spec = load_system(system)
    screen = _Screen(model, overrides, spec, batch, None)
    shape = model_shape(*session.captured(model, overrides, 1, None))
    checked = deep = 0
    for plan in plan_space(shape, device_count(spec), batch, spec=spec):
        want = _every_stage_bound(screen, plan)
        assert screen._first_bound(plan) == pytest.approx(want, rel=1e-12, abs=0), plan.text()
        checked += 1
        deep += plan.pp * plan.interleave >= 4 and bool(plan.stages)
        if checked % 97 == 0:
            program, _ = compile_model(model, overrides, spec, plan, batch, derive=True)
            assert screen._first_bound(plan) <= simulate(program).step_time_s * (1 + 1e-12)
    assert checked >= 300 and deep >= 20


@pytest.mark.parametrize("plan", [
    Plan(pp=2, interleave=2, mb=1, schedule="interleaved", stages=(1, 0, 1, 1)),
    Plan(dp=2, pp=2, mb=1, ep=2, zero=3, recompute="full", stages=(2, 1)),
    Plan(tp=2, pp=2, interleave=2, mb=1, schedule="interleaved", precision="fp8",
         stages=(0, 1, 1, 1)),
])
def test_each_distinct_chunk_timed_once_is_every_chunk_timed(plan: Plan) -> None:
    """`all_chunk_times` times one chunk per (blocks, first, last); every chunk timed on its own
    gives the same times, field for field."""
    spec = load_system("h100-cluster:8")
    program, _ = compile_model("moe", MOE, spec, plan, 8, derive=True)
    dev, memory = device_model(program), device_memory(program)
    want = {c.index: chunk_times(program, c, dev, memory) for c in program.chunks}
    assert all_chunk_times(program, dev, memory) == want


def test_memory_screen_bisection_is_every_mb_asked() -> None:
    """With the capacity set between the least and the most bytes of the families (so some mbs
    pass and some do not), the mbs that pass `_family_fits` are a prefix of the ascending mbs,
    the one `_fitting_mbs` finds."""
    spec, batch = load_system("a100-cluster:8"), 48
    screen = _Screen("gpt", DENSE, spec, batch, None)
    shape = model_shape(*session.captured("gpt", DENSE, 1, None))
    families = {Plan(dp=p.dp, tp=p.tp, pp=p.pp, interleave=p.interleave, stages=p.stages,
                     zero=3 if p.dp > 1 else 0)
                for p in plan_space(shape, device_count(spec), batch, spec=spec)}
    sizes = sorted(max(screen._family_bytes(f, mb)) for f in families
                   for mb in divisors(batch // f.dp))
    screen.capacity = sizes[len(sizes) // 2]
    cut = 0
    for family in sorted(families, key=lambda f: f.text()):
        parts, mbs = screen._family_parts(family), divisors(batch // family.dp)
        passing = [mb for mb in mbs if screen._family_fits(family, mb, parts)]
        count = screen._fitting_mbs(family, mbs, parts)
        assert passing == mbs[:count], family.text()
        cut += 0 < count < len(mbs)
    assert cut >= 5


def test_one_f_one_b_peak_is_the_warm_forwards_and_one_more() -> None:
    """`stage_activations` takes 1F1B's peak as min(pp - s, micro) micro-batches of the stage's
    saved bytes: the walk (`memory.peak_in_flight`) over every pp <= 12, stage and micro <= 40,
    vp_group 0 or 2, finds the same to rounding."""
    from dojo.sim.memory import peak_in_flight

    for pp in range(1, 13):
        saved = [1e6 * (1.3 + (v * 7919) % 13) for v in range(pp)]
        for micro in range(1, 41):
            for s in range(pp):
                for group in (0, 2):
                    walk = peak_in_flight("1f1b", s, pp, micro, 1, saved, group)
                    assert min(pp - s, micro) * saved[s] == pytest.approx(walk, rel=1e-13)


def _every_device_makespan(profile: Profile, micro: int, fwd: list[float],
                           bwd: list[float]) -> float:
    """The makespan walked over every device (what `Profile.makespan` takes at its peaks):
    device s after the forwards and backwards of virtual stages 0 to s - 1, summed in order."""
    both = [f + b for f, b in zip(fwd, bwd)]
    best = head = tail = 0.0
    for s, counts in enumerate(profile.stages):
        best = max(best, head + micro * sum(n * both[k] for k, n in counts) + tail)
        head += fwd[profile.kind_of[s]]
        tail += bwd[profile.kind_of[s]]
    return best


def test_makespan_at_its_peaks_is_every_device_to_the_bit() -> None:
    """`Profile.makespan` reads only the last device of each distinct chunk counts; over even
    and uneven splits of pp <= 9 x interleave <= 4 virtual stages and micro <= 9, with times
    whose sums round, it gives the walk over every device, bit for bit (a peak that dropped
    the device with the largest end would show)."""
    checked = dropped = 0
    for pp in range(1, 10):
        for interleave in range(1, 5):
            chunks = pp * interleave
            for blocks in (chunks, chunks + 3, 2 * chunks - 1, 3 * chunks + 2):
                even = [blocks // chunks + (v < blocks % chunks) for v in range(chunks)]
                for split in (even, even[::-1], [even[-1]] + even[1:-1] + [even[0]]
                              if chunks > 1 else even):
                    profile = Profile.of(split, pp, interleave)
                    dropped += len(profile.peaks) < pp
                    kinds = len(profile.kinds)
                    for seed in range(3):
                        fwd = [0.1 * (1 + (k * 7 + seed * 3) % 11) / 3 for k in range(kinds)]
                        bwd = [0.2 * (1 + (k * 5 + seed) % 13) / 7 for k in range(kinds)]
                        for micro in (1, 2, 5, 9):
                            assert profile.makespan(micro, fwd, bwd) == \
                                _every_device_makespan(profile, micro, fwd, bwd), (split, pp)
                            checked += 1
    assert checked > 3000 and dropped > 100

