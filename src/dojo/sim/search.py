"""Automatic planning: the fastest plan that fits, found by branch and bound over the simulator.

The objective is the event-driven simulator itself, which is neither linear nor convex in the
plan, so a MILP would have to approximate it; instead every candidate gets a closed-form lower
bound on its step time (its share of the matrix FLOPs at the device's best efficiency, stretched by
the pipeline bubble (pp - 1) / (interleave x micro-batches)), candidates that do not fit in memory
are rejected with the reason, and the rest are simulated in order of their bound until the bound
passes the best time found. The result equals exhaustive enumeration (a test checks it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dojo.compiler.mapping import device_count, group_levels
from dojo.errors import ConfigError, DojoError
from dojo.hardware.spec import SystemSpec
from dojo.plan.plan import ModelShape, Plan, validate_plan
from dojo.sim.memory import device_memory
from dojo.sim.session import Simulated, captured, compile_model, model_shape
from dojo.sim.simulate import device_model, simulate

MICRO_BATCHES = (1, 2, 4, 8, 16)
INTERLEAVES = (1, 2, 4)
RECOMPUTES = ("none", "selective", "full")
ZEROS = (0, 1, 3)


@dataclass(frozen=True)
class Candidate:
    plan: Plan
    step_time_s: float
    mfu: float
    fits: bool
    simulated: Simulated

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan.text(), "step_time_s": self.step_time_s, "mfu": self.mfu,
                "fits": self.fits}


@dataclass(frozen=True)
class Search:
    best: Candidate
    candidates: tuple[Candidate, ...]
    rejected: tuple[tuple[str, str], ...]   # (family, reason)
    search_s: float
    evaluated: int
    considered: int

    def to_json(self) -> dict[str, Any]:
        return {"best": self.best.to_json(),
                "candidates": [c.to_json() for c in self.candidates],
                "rejected": [{"family": f, "reason": r} for f, r in self.rejected],
                "search_s": self.search_s}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def plan_space(shape: ModelShape, devices: int, batch: int, spec: SystemSpec,
               precision: str = "bf16") -> Iterator[Plan]:
    """Every plan worth considering: tensor parallelism kept inside the fastest level."""
    # For models without attention blocks (CNNs), `tp` splits every matrix op and its vector ops
    # across devices like a spatial/channel split; only the splits' boundary traffic is unmodelled.
    fast = _fast_group(spec)
    for tp in _divisors(devices):
        if tp > fast:
            break
        for pp in _divisors(devices // tp):
            dp = devices // (tp * pp)
            for mb in MICRO_BATCHES:
                for inter in INTERLEAVES if pp > 1 else (1,):
                    for rec in RECOMPUTES:
                        for zero in ZEROS if dp > 1 else (0,):
                            plan = Plan(dp=dp, tp=tp, pp=pp, mb=mb, interleave=inter,
                                        schedule="interleaved" if inter > 1 else "1f1b",
                                        recompute=rec, sp=tp > 1, zero=zero,
                                        precision=precision)
                            try:
                                validate_plan(plan, shape, devices, batch)
                            except ConfigError:
                                continue
                            yield plan


def _fast_group(spec: SystemSpec) -> int:
    """Devices that share the first level above them (a GPU server, a Dojo tile)."""
    levels = group_levels(spec, device_count(spec), 1)
    return levels[0].members if levels else 1


def best_plan(model: str, overrides: Mapping[str, Any], spec: SystemSpec, batch: int,
              seq: int | None = None, top: int = 5, precision: str = "bf16") -> Search:
    """Search the plan space of `model` on `spec` for global batch `batch`."""
    start = time.perf_counter()
    graph, config = captured(model, overrides, 1, seq)
    shape = model_shape(graph, config)
    devices = device_count(spec)
    ranked, rejected = _screen(model, overrides, spec, batch, seq, shape, devices, precision)
    if not ranked:
        reasons = "; ".join(f"{f}: {r}" for f, r in rejected[:3]) or (
            f"no dp x tp x pp = {devices} divides both the model ({shape.layers} blocks, "
            f"{shape.heads} heads) and the batch")
        raise DojoError(f"no plan fits {model} on {spec.name} with batch {batch}: {reasons}")
    found: list[Candidate] = []
    evaluated = 0
    for bound, plan in ranked:
        if len(found) >= top and bound > found[top - 1].step_time_s:
            break
        sim = _simulate(model, overrides, spec, plan, batch, seq)
        evaluated += 1
        r = sim.result
        found.append(Candidate(plan, r.step_time_s, r.mfu, r.memory.fits, sim))
        found.sort(key=_preference)
    return Search(best=found[0], candidates=tuple(found[:top]), rejected=tuple(rejected),
                  search_s=time.perf_counter() - start, evaluated=evaluated,
                  considered=len(ranked) + len(rejected))


def _preference(c: Candidate) -> tuple[float, int, int, int, int, int]:
    """Fastest first; among equal times (to 1e-9), the plan with fewer moving parts."""
    p = c.plan
    return (round(c.step_time_s, 12), RECOMPUTES.index(p.recompute), p.zero, p.tp, p.pp,
            p.interleave)


def _simulate(model: str, overrides: Mapping[str, Any], spec: SystemSpec, plan: Plan,
              batch: int, seq: int | None) -> Simulated:
    program, graph = compile_model(model, overrides, spec, plan, batch, seq)
    return Simulated(program=program, result=simulate(program), graph=graph)


def _screen(model: str, overrides: Mapping[str, Any], spec: SystemSpec, batch: int,
            seq: int | None, shape: ModelShape, devices: int, precision: str
            ) -> tuple[list[tuple[float, Plan]], list[tuple[str, str]]]:
    """Plans that fit, with their lower bounds (ascending); the rest grouped by family."""
    ranked: list[tuple[float, Plan]] = []
    rejected: dict[str, str] = {}
    for plan in plan_space(shape, devices, batch, spec, precision):
        program, _ = compile_model(model, overrides, spec, plan, batch, seq)
        # The stage's bytes say why; `dojo simulate` on the plan adds the per-chip report.
        memory = device_memory(program, chip_report=False)
        family = f"tp={plan.tp},pp={plan.pp},recompute={plan.recompute},zero={plan.zero}"
        if not memory.fits:
            rejected.setdefault(family, memory.reason)
            continue
        ranked.append((_lower_bound(program), plan))
    ranked.sort(key=lambda x: (x[0], x[1].text()))
    fitting = {f"tp={p.tp},pp={p.pp},recompute={p.recompute},zero={p.zero}" for _, p in ranked}
    out = [(f, r) for f, r in rejected.items() if f not in fitting]
    return ranked, out


def _lower_bound(program: Any) -> float:
    """Seconds the simulator cannot beat: the busiest stage's compute (its ops timed exactly as
    the simulator times them, communication left out), stretched by the schedule's bubble."""
    dev = device_model(program)
    plan = program.plan
    busiest = 0.0
    for stage in range(plan.pp):
        work = 0.0
        for chunk in program.device_chunks(stage):
            ops = list(chunk.forward) + list(chunk.backward) + list(chunk.recompute)
            work += sum(dev.op_time(o) for o in ops)
        busiest = max(busiest, work * program.microbatches)
    bubble = (plan.pp - 1) / (plan.interleave * program.microbatches)
    return busiest * (1 + bubble)


def exhaustive(model: str, overrides: Mapping[str, Any], spec: SystemSpec, batch: int,
               seq: int | None = None, precision: str = "bf16") -> Candidate:
    """Simulate every fitting plan (the reference the search is tested against)."""
    graph, config = captured(model, overrides, 1, seq)
    shape = model_shape(graph, config)
    best: Candidate | None = None
    for plan in plan_space(shape, device_count(spec), batch, spec, precision):
        sim = _simulate(model, overrides, spec, plan, batch, seq)
        if not sim.result.memory.fits:
            continue
        cand = Candidate(plan, sim.result.step_time_s, sim.result.mfu, True, sim)
        if best is None or cand.step_time_s < best.step_time_s:
            best = cand
    if best is None:
        raise DojoError(f"no plan fits {model} on {spec.name}")
    return best


