"""Fitting a system's efficiencies to step times measured on it (`dojo calibrate`).

The simulator predicts a run's step time from the system's calibration (dojo.sim.costs); three
of its fields are what a cluster and its software make of the hardware, and are fitted here:
- `matrix_efficiency`: the fraction of the tensor-core peak a large GEMM reaches;
- `link_efficiency`: the fraction of link bandwidth a collective reaches;
- `step_overhead_s`: fixed seconds per step outside the modelled work.
Software stacks differ (a fused Megatron-LM step against an eager FSDP one): each stack named in
the runs, other than the base stack (the runs that name none, else the most common), gets its own
GEMM efficiency, fitted from its own runs as a factor on the base's.

The fit minimises the squared log error sum(ln(predicted / measured)^2) (a ratio error: a 5 %
miss on a 1 s step weighs as much as on a 60 s one) plus a weak ridge toward the starting values
(`PRIOR_WEIGHT`), which keeps a parameter the runs barely see near where it was. It is
Levenberg-Marquardt on the efficiencies' logarithms with forward-difference derivatives from the
simulator itself: every evaluation simulates every run, so the work is bounded by `MAX_RUNS` runs
(dojo.sim.runs) x at most `MAX_ITERATIONS` iterations x 3 simulations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from dojo.compiler.program import Program
from dojo.errors import DojoError
from dojo.sim.runs import Run

BASE = ("matrix_efficiency", "link_efficiency", "step_overhead_s")
LOG = ("matrix_efficiency", "link_efficiency")  # fitted as logarithms, bounded to (0, 1]
LOWEST_EFFICIENCY = 0.02
MAX_OVERHEAD_S = 600.0
MAX_ITERATIONS = 20
LOG_STEP = 0.02         # forward-difference step in ln(efficiency)
PRIOR_WEIGHT = 0.02     # ridge per unit of ln(efficiency), or per second of overhead
UNSEEN = 0.01           # a parameter whose d ln(step) / d ln(param) stays below this is held


@dataclass(frozen=True)
class Prepared:
    """A run compiled once for the system: its program is re-simulated at each trial."""

    run: Run
    program: Program


@dataclass(frozen=True)
class Fit:
    """A fitted calibration: base fields, per-stack fields, and the runs' predictions at it."""

    values: Mapping[str, float]                    # base calibration fields
    stacks: Mapping[str, Mapping[str, float]]      # stack -> its calibration fields
    base_stack: str
    held: tuple[str, ...]                          # base fields the runs did not determine
    start_s: tuple[float, ...]                     # predictions at the starting calibration
    predicted_s: tuple[float, ...]                 # predictions at the fit
    iterations: int

    def residuals(self, runs: Sequence[Run]) -> list[float]:
        """(predicted - measured) / measured per run, at the fit."""
        return [(p - r.seconds) / r.seconds for p, r in zip(self.predicted_s, runs)]


def prepare(runs: Sequence[Run], system: str) -> list[Prepared]:
    """Compile every run on `system` (its device count from the run, else the plan's)."""
    from dojo.errors import UnknownNameError
    from dojo.hardware.loader import load_system
    from dojo.models import check_model
    from dojo.plan.plan import parse_plan
    from dojo.sim.session import simulate_model

    out = []
    for run in runs:
        try:
            check_model(run.model)
        except UnknownNameError as err:
            raise DojoError(f"{run.label}, column 'model' = {run.model!r}: expected one of "
                            f"{', '.join(err.known)}") from None
        try:
            check_model(run.model, run.overrides, run.seq)
            plan = parse_plan(run.plan, source=f"{run.label}, column 'plan'")
            # The system as written, not the run's stack: the fit carries the stacks itself.
            spec = load_system(system, devices=run.devices or plan.devices)
            sim = simulate_model(run.model, run.overrides, spec, plan, run.batch, run.seq)
        except DojoError as err:
            text = str(err)
            raise DojoError(text if text.startswith(run.label) else f"{run.label}: {text}") \
                from None
        out.append(Prepared(run, sim.program))
    return out


def predict(p: Prepared, fields: Mapping[str, float]) -> float:
    """Seconds per step of `p` with the calibration fields `fields` over its system's own."""
    from dojo.sim.simulate import simulate

    spec = p.program.system
    leaf = replace(spec.leaf, calibration={**spec.leaf.calibration, **fields})
    return simulate(replace(p.program, system=replace(spec, leaf=leaf))).step_time_s


class _Problem:
    """The parameter vector: [ln e_matrix, ln e_link, overhead s, ln factor per stack]."""

    def __init__(self, prepared: Sequence[Prepared], stacks: Sequence[str]) -> None:
        from dojo.sim.simulate import leaf_calibration

        self.prepared = list(prepared)
        self.stacks = list(stacks)
        cal = leaf_calibration(self.prepared[0].program.system)
        self.x0 = np.array([math.log(cal.matrix_efficiency), math.log(cal.link_efficiency),
                            cal.step_overhead_s] + [0.0] * len(self.stacks))
        self.measured = np.array([p.run.seconds for p in self.prepared])

    def fields(self, x: np.ndarray, stack: str) -> dict[str, float]:
        e_m = math.exp(x[0])
        if stack in self.stacks:
            e_m *= math.exp(x[3 + self.stacks.index(stack)])
        return {"matrix_efficiency": min(1.0, e_m), "link_efficiency": math.exp(x[1]),
                "step_overhead_s": float(x[2])}

    def times(self, x: np.ndarray, rows: Sequence[int]) -> np.ndarray:
        return np.array([predict(self.prepared[i], self.fields(x, self.prepared[i].run.stack))
                         for i in rows])

    def jacobian(self, x: np.ndarray, t: np.ndarray, rows: Sequence[int]) -> np.ndarray:
        """d ln(step) / d x for the runs `rows`, t their step times at x."""
        jac = np.zeros((len(rows), len(x)))
        for col in (0, 1):
            step = LOG_STEP if x[col] + LOG_STEP <= 0.0 else -LOG_STEP
            moved = x.copy()
            moved[col] += step
            jac[:, col] = (np.log(self.times(moved, rows)) - np.log(t)) / step
        jac[:, 2] = 1.0 / t  # the overhead adds its seconds to the step, exactly
        for k, stack in enumerate(self.stacks):
            mine = [j for j, i in enumerate(rows) if self.prepared[i].run.stack == stack]
            jac[mine, 3 + k] = jac[mine, 0]
        return jac

    def clamp(self, x: np.ndarray) -> np.ndarray:
        x = x.copy()
        low = math.log(LOWEST_EFFICIENCY)
        x[0:2] = np.clip(x[0:2], low, 0.0)
        x[2] = min(max(x[2], 0.0), MAX_OVERHEAD_S)
        x[3:] = np.clip(x[3:], low - x[0], -low)
        return x

    def cost(self, x: np.ndarray, t: np.ndarray, rows: Sequence[int]) -> float:
        r = np.log(t / self.measured[list(rows)])
        return float(r @ r + PRIOR_WEIGHT ** 2 * np.sum((x - self.x0) ** 2))


def _stacks_of(runs: Sequence[Run]) -> tuple[str, list[str]]:
    """(base stack, the stacks fitted as factors on it)."""
    names = [r.stack for r in runs]
    base = "" if "" in names else min(set(names), key=lambda s: (-names.count(s), s))
    return base, sorted(set(names) - {base})


Times = Callable[[np.ndarray, Sequence[int]], np.ndarray]
Jacobian = Callable[[np.ndarray, np.ndarray, Sequence[int]], np.ndarray]


class _Surrogate:
    """The simulator's step times linearised in the logarithms around x0, with the overhead's
    seconds added exactly: t(x) = (t0 - o0) exp(J0 (u - u0)) + o. Built from the simulator
    alone (t0, J0 at the system's own calibration), so fits on it see no measurement beyond
    the runs they are given."""

    def __init__(self, problem: _Problem, t0: np.ndarray, jac0: np.ndarray) -> None:
        self.problem, self.t0, self.jac0 = problem, t0, jac0.copy()
        self.jac0[:, 2] = 0.0

    def times(self, x: np.ndarray, rows: Sequence[int]) -> np.ndarray:
        o0 = self.problem.x0[2]
        rows = list(rows)
        grow = np.exp(self.jac0[rows] @ (x - self.problem.x0))
        return (self.t0[rows] - o0) * grow + x[2]

    def jacobian(self, x: np.ndarray, t: np.ndarray, rows: Sequence[int]) -> np.ndarray:
        rows = list(rows)
        jac = self.jac0[rows] * ((t - x[2]) / t)[:, None]
        jac[:, 2] = 1.0 / t
        return jac


def _solve(problem: _Problem, rows: Sequence[int], iterations: int, times: Times,
           jacobian: Jacobian, start: np.ndarray | None = None, t0: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray, int]:
    """Levenberg-Marquardt over the runs `rows` from `start` (default x0), with the ridge
    toward x0, timing trials with `times` and their derivatives with `jacobian`. Parameters
    that no run's time depends on at the start stay where they are. Returns (x, step times
    at x, iterations used)."""
    x = problem.x0.copy() if start is None else start.copy()
    t = times(x, rows) if t0 is None else t0
    jac = jacobian(x, t, rows)
    free = [c for c in range(len(x)) if np.max(np.abs(jac[:, c]), initial=0.0) >= UNSEEN
            or c == 2]
    lam, cost, used = 1e-3, problem.cost(x, t, rows), 0
    w2 = PRIOR_WEIGHT ** 2
    while used < iterations:
        used += 1
        r = np.log(t / problem.measured[list(rows)])
        j = jac[:, free]
        a = j.T @ j + w2 * np.eye(len(free))
        g = j.T @ r + w2 * (x - problem.x0)[free]
        delta = np.linalg.solve(a + lam * np.diag(np.diag(a)), -g)
        trial = x.copy()
        trial[free] += delta
        trial = problem.clamp(trial)
        t_trial = times(trial, rows)
        c_trial = problem.cost(trial, t_trial, rows)
        if c_trial < cost:
            converged = cost - c_trial < 1e-10 or np.max(np.abs(trial - x)) < 1e-5
            x, t, cost, lam = trial, t_trial, c_trial, max(lam / 3, 1e-9)
            if converged:
                break
            jac = jacobian(x, t, rows)
        else:
            lam *= 10
            if lam > 1e6:
                break
    return x, t, used


def fit(prepared: Sequence[Prepared], iterations: int = MAX_ITERATIONS) -> Fit:
    """Fit the base efficiencies, the step overhead and each non-base stack's GEMM efficiency to
    the runs (prepared on one system). Bounded: at most `iterations` (<= MAX_ITERATIONS)."""
    if not prepared:
        raise DojoError("dojo calibrate: no runs to fit")
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise DojoError(f"--iterations = {iterations}: expected 1 to {MAX_ITERATIONS}")
    base, stacks = _stacks_of([p.run for p in prepared])
    problem = _Problem(prepared, stacks)
    rows = list(range(len(prepared)))
    start = problem.times(problem.x0, rows)
    jac = problem.jacobian(problem.x0, start, rows)
    # First on the surrogate (no simulations), then on the simulator from there.
    near = _Surrogate(problem, start, jac)
    x, _, _ = _solve(problem, rows, MAX_ITERATIONS, near.times, near.jacobian, t0=start)
    x, t, used = _solve(problem, rows, iterations, problem.times, problem.jacobian, start=x)
    return _result(problem, x, t, start, jac, base, used)


def _result(problem: _Problem, x: np.ndarray, t: np.ndarray, start: np.ndarray,
            jac: np.ndarray, base: str, used: int) -> Fit:
    fields = problem.fields(x, base)
    held = tuple(name for c, name in enumerate(BASE[:2])
                 if np.max(np.abs(jac[:, c]), initial=0.0) < UNSEEN)
    stacks: dict[str, Mapping[str, float]] = {s: {"matrix_efficiency":
                                                  problem.fields(x, s)["matrix_efficiency"]}
                                              for s in problem.stacks}
    if base:
        stacks[base] = {}
    return Fit(values=fields, stacks=stacks, base_stack=base, held=held,
               start_s=tuple(float(v) for v in start), predicted_s=tuple(float(v) for v in t),
               iterations=used)


@dataclass(frozen=True)
class HeldOut:
    """One leave-one-out fold: the run left out, its prediction from the fit to the others."""

    run: Run
    predicted_s: float
    fitted: Mapping[str, float]  # the fold's calibration fields for the run's stack

    @property
    def error(self) -> float:
        return (self.predicted_s - self.run.seconds) / self.run.seconds


def leave_one_out(prepared: Sequence[Prepared],
                  progress: Callable[[int, int, str], None] | None = None) -> list[HeldOut]:
    """For each run: fit on all the others, predict it with the simulator. Each fold is fitted
    on the simulator's log-linear surrogate around the system's own calibration (`_Surrogate`:
    its times and derivatives come from the simulator, computed once for all folds, not from
    any measurement), so no fold sees the run it predicts; a stack with no other run falls back
    to the base efficiency. Work: 3 simulations per run for the surrogate, 1 per fold."""
    stacks = _stacks_of([p.run for p in prepared])[1]
    problem = _Problem(prepared, stacks)
    every = list(range(len(prepared)))
    t0 = problem.times(problem.x0, every)
    near = _Surrogate(problem, t0, problem.jacobian(problem.x0, t0, every))
    out = []
    for i, p in enumerate(prepared):
        if progress is not None:
            progress(i, len(prepared), p.run.label)
        rows = [j for j in every if j != i]
        if not rows:
            x = problem.x0
        else:
            x, _, _ = _solve(problem, rows, MAX_ITERATIONS, near.times, near.jacobian,
                             t0=t0[rows])
        fields = problem.fields(x, p.run.stack)
        out.append(HeldOut(p.run, predict(p, fields), fields))
    return out
