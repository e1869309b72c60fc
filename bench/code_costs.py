"""What a cold call site costs an eager op (bench/calibrate_cpu.py's `cold_*` and `code_keys_*`
figures; `dojo.compiler.code`, docs/benchmarks.md, sixteenth round).

Each tiny block stack of `eager_stacks` steps with N distinct tiny ops (a few hundred bytes of
data each: only their code can evict anything) run between its steps, N in `EVICTIONS`. Its
forward and backward slow down as N grows and level off once the stack's code is all gone
from the core's caches. By `dojo.compiler.code`'s rule the stack's first block and its loss are
its cold call sites (the second block repeats the first's code), so the levelled-off slowdown
over those calls is their cost: a matrix call's (a GEMM's, a convolution's, attention's: a
library's code), another call's and an elementwise call's, the least-squares fit of the four
stacks' slowdowns to their cold calls of each kind (per phase; a figure that comes out
negative is left out and the others fitted again). The slowdown
against the code run between passes, the stack's own call sites (`code.section_keys`) plus N,
is a ramp: where it starts and where it reaches the levelled-off figure are `code_keys_hot`
and `code_keys_cold` (a least-squares line through the points on the ramp).

A oneDNN call's own cold cost (`library_cold`: `cold_library_*` for a convolution,
`cold_eltwise_*` for an exact GELU) is measured on the call alone, timed by itself hot and after
all the tiny ops, against a twin call that does not go to oneDNN: the same convolution on one
image (im2col) and the tanh GELU. On the Xeon VM of docs/benchmarks.md's seventeenth round,
after 60 tiny ops a oneDNN convolution's forward grew 35 us against its im2col twin's 13 us,
its backward 95 against 69 us; the exact GELU's 15 and 80 us against 8 and 56 us.

A tensor-parallel region's (`cold_region_s`) likewise: a matmul between Megatron's f and g
(`dojo.runtime.tensor_parallel`, the all-reduces no-ops) against the bare matmul, its growth
over both phases per region. On the Zen 4 VM of docs/benchmarks.md's eighteenth round the pair
of regions grew 15.2 us forward and 0.4 us backward more than the bare matmul (7.8 us a region);
in a tp=2 step the regions cost 34 us each against the 18-24 us they take hot.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

EVICTIONS = (0, 10, 20, 30, 45, 60)
SWEEP_STEPS = 10  # steps per N before the next N (`eviction_curve`)
Curve = dict[int, tuple[float, float]]  # N -> fastest (forward s, backward s)


def tiny_ops() -> list[Callable[[], object]]:
    """60 distinct tiny ops (ATen kernels and call sites), operands of at most 32 floats."""
    fn = torch.nn.functional
    s, s4 = torch.randn(4, 8), torch.randn(1, 2, 4, 4)
    w4, idx = torch.randn(2, 2, 3, 3), torch.tensor([0, 1])
    return [s.exp, s.tanh, s.sigmoid, s.sqrt, s.abs, lambda: s.cumsum(0), s.argmax, s.norm,
            s.var, s.mean, lambda: fn.layer_norm(s, (8,)), lambda: s @ s.T,
            lambda: torch.cat([s, s]), lambda: fn.softmax(s, -1), lambda: fn.gelu(s),
            lambda: fn.silu(s), lambda: s.topk(2), lambda: fn.conv2d(s4, w4, padding=1),
            lambda: s.flip(0), lambda: fn.batch_norm(s4, None, None, training=True),
            lambda: fn.max_pool2d(s4, 2), lambda: s.index_select(0, idx),
            lambda: fn.log_softmax(s, -1), lambda: s.clamp(0, 1), lambda: s.lt(0),
            lambda: torch.where(s > 0, s, s), lambda: fn.embedding(idx, s),
            lambda: s.roll(1, 0), lambda: fn.interpolate(s4, scale_factor=2.0),
            lambda: fn.dropout(s, 0.1), lambda: s.t().contiguous(), lambda: s.pow(2),
            s.rsqrt, lambda: s.addcmul(s, s), lambda: s.lerp(s, 0.5),
            lambda: fn.avg_pool2d(s4, 2), lambda: s.max(0), lambda: s.sum(0),
            lambda: fn.cross_entropy(s, idx[:1].repeat(4)), lambda: s.amax(1),
            lambda: s.cummax(0), lambda: s.sort(0), s.median, lambda: s.prod(0),
            lambda: s.std(0), lambda: s.logsumexp(1), s.tril, s.triu, s.sign, s.floor, s.ceil,
            s.round, s.frac, s.log1p, s.expm1, s.sin, s.cos, s.atan, s.erf, s.reciprocal]


Calls = tuple[int, int, int]  # cold (matrix, other, elementwise) calls of one phase


def stack_calls(model: torch.nn.Module, x: torch.Tensor) -> tuple[Calls, Calls, int]:
    """(cold calls forward, the same backward, call sites) of one step of stack `model` by
    `dojo.compiler.code`'s rule, on its captured graph, one op a kernel."""
    from dojo.compiler import fusion
    from dojo.compiler.code import cold_marks, section_keys
    from eager_stacks import stack_graph

    graph = stack_graph(model, x)
    grouped = fusion.groups(graph, ["all"] * len(graph.ops), "none")
    per = {"forward": [0, 0, 0], "backward": [0, 0, 0]}
    for (group, _), (other, pointwise) in zip(grouped, cold_marks(grouped)):
        row = per[group[0].phase]
        row[0 if group[0].rule in fusion.MATRIX_RULES else 1] += other
        row[2] += pointwise
    keys = len(section_keys(graph.ops, ["all"] * len(graph.ops)).get("all", frozenset()))
    f, b = per["forward"], per["backward"]
    return (f[0], f[1], f[2]), (b[0], b[1], b[2]), keys


def per_call(rows: list[tuple[Calls, float]]) -> tuple[float, float, float]:
    """Seconds per cold (matrix, other, elementwise) call: the non-negative least-squares fit
    of each stack's slowdown (`rows`: its cold calls, its seconds) to its calls."""
    a = torch.tensor([list(c) for c, _ in rows], dtype=torch.float64)
    y = torch.tensor([[t] for _, t in rows], dtype=torch.float64)
    free = [0, 1, 2]
    while free:
        fit = torch.linalg.lstsq(a[:, free], y).solution[:, 0].tolist()
        if min(fit) >= 0:
            out = [0.0, 0.0, 0.0]
            for i, v in zip(free, fit):
                out[i] = v
            return out[0], out[1], out[2]
        free.pop(fit.index(min(fit)))  # a negative figure: fit the others without it
    return 0.0, 0.0, 0.0


def eviction_curve(model: torch.nn.Module, x: torch.Tensor, rounds: int = 3,
                   steps: int = 60) -> Curve:
    """Per N of `EVICTIONS`: the fastest (forward, backward) seconds of one step of `model`
    with the first N `tiny_ops` run before it, over `rounds` x `steps` steps, taken in
    sweeps of `SWEEP_STEPS` steps per N over every N in turn: a shared VM's speed moves
    between states up to 2x apart for a second or more (bench/step_gap.py --series), which
    measuring one N after another put on some N and not on others (a curve that fell and
    rose again between N = 20 and 30)."""
    from eager_stacks import _one_step

    tiny = tiny_ops()
    best = {n: (float("inf"), float("inf")) for n in EVICTIONS}
    for _ in range(max(1, rounds * steps // SWEEP_STEPS)):
        for n in EVICTIONS:
            for _ in range(SWEEP_STEPS):
                for op in tiny[:n]:
                    op()
                fwd, bwd = _one_step(model, x)
                best[n] = (min(best[n][0], fwd), min(best[n][1], bwd))
    return best


def _ramp(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(K at share 0, K at share 1) of the least-squares line through (K, share) `points`."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    if slope <= 0:
        return 0.0, 0.0
    start = mx - my / slope
    return max(0.0, start), max(0.0, start) + 1.0 / slope


def _twins() -> dict[str, tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]]:
    """Per cold kind: (the call, its twin without what is timed): a 3x3 convolution of 2
    images (oneDNN) against the same of 1 image (im2col, `SMALL_INPUT`), an exact GELU against
    the tanh one, a matmul between Megatron's f and g against the bare matmul; operands
    requiring grad (a training step's)."""
    from dojo.runtime.tensor_parallel import _CopyToTP, _ReduceFromTP

    fn = torch.nn.functional
    two = torch.randn(2, 4, 6, 6, requires_grad=True)
    one = torch.randn(1, 4, 6, 6, requires_grad=True)
    w = torch.randn(4, 4, 3, 3, requires_grad=True)
    x = torch.randn(17, 64, requires_grad=True)
    a, m, group = torch.randn(1, 4, 8, requires_grad=True), torch.randn(8, 8), object()
    m.requires_grad_(True)
    return {"library": (lambda: fn.conv2d(two, w, padding=1), lambda: fn.conv2d(one, w, padding=1)),
            "eltwise": (lambda: fn.gelu(x), lambda: fn.gelu(x, approximate="tanh")),
            "region": (lambda: _ReduceFromTP.apply(_CopyToTP.apply(a, group) @ m, group),
                       lambda: a @ m)}


def call_times(call: Callable[[], torch.Tensor], evict: int, steps: int = 20
               ) -> tuple[float, float]:
    """Fastest (forward, backward) seconds of `call` itself over `steps`, with the first `evict`
    `tiny_ops` run before each: before the call, and between it and its backward (that of
    the sum of its output, started with the output's)."""
    tiny = tiny_ops()[:evict]
    fwd = bwd = float("inf")
    for _ in range(steps):
        for op in tiny:
            op()
        start = time.perf_counter()
        y = call()
        fwd = min(fwd, time.perf_counter() - start)
        loss = y.sum()
        for op in tiny:
            op()
        start = time.perf_counter()
        loss.backward()
        bwd = min(bwd, time.perf_counter() - start)
    return fwd, bwd


def library_cold(rounds: int = 3, sweeps: int = 12) -> dict[str, float]:
    """The calibration's `cold_library_s` and `cold_eltwise_s` (forward and backward) and
    `cold_region_s`: what a oneDNN call's (a tp region's) own time grows by after all of
    `tiny_ops` ran before it, beyond what its twin's grows by (`_twins`: the twin's growth is
    its op's cold figure, which the call pays too). Each call is timed alone (`call_times`),
    hot and after the evictions, in `rounds` x `sweeps` sweeps over every case in turn (the
    machine's states fall on all)."""
    import torch.distributed as dist

    last, twins = len(tiny_ops()), _twins()
    best: dict[tuple[str, int, int], tuple[float, float]] = {}
    real = dist.all_reduce
    # the regions' all-reduces have no peer here: no-ops, as in `rank_costs.tp_region`
    dist.all_reduce = lambda *a, **k: None  # type: ignore[assignment]
    try:
        for _ in range(rounds * sweeps):
            for kind, pair in twins.items():
                for which, call in enumerate(pair):
                    for evict in (0, last):
                        got = call_times(call, evict)
                        old = best.get((kind, which, evict), got)
                        best[(kind, which, evict)] = (min(old[0], got[0]), min(old[1], got[1]))
    finally:
        dist.all_reduce = real
    growth = {(kind, phase): max(0.0, sum(
        sign * (best[(kind, which, last)][phase] - best[(kind, which, 0)][phase])
        for which, sign in ((0, 1), (1, -1)))) for kind in twins for phase in (0, 1)}
    fields = {f"cold_{kind}{suffix}_s": growth[(kind, phase)] for kind in ("library", "eltwise")
              for phase, suffix in ((0, ""), (1, "_backward"))}
    # two regions (an f and a g) in the call; a region is one figure for both phases
    fields["cold_region_s"] = (growth[("region", 0)] + growth[("region", 1)]) / 2
    return fields


def cold_fields(rounds: int = 3) -> dict[str, float]:
    """The calibration's `cold_*` and `code_keys_*` fields (module docstring)."""
    from eager_stacks import _stacks

    last = EVICTIONS[-1]
    curves, calls = {}, {}
    for name, (model, x) in _stacks().items():
        curves[name] = eviction_curve(model, x, rounds)
        calls[name] = stack_calls(model, x)
    fields: dict[str, float] = {}
    points: list[tuple[float, float]] = []
    for phase, suffix in ((0, ""), (1, "_backward")):
        def slow(name: str, n: int = last, phase: int = phase) -> float:
            return max(0.0, curves[name][n][phase] - curves[name][0][phase])

        matrix, other, pointwise = per_call([(calls[k][phase], slow(k)) for k in curves])
        fields[f"cold_matrix{suffix}_s"] = matrix
        fields[f"cold_call{suffix}_s"] = other
        fields[f"cold_pointwise{suffix}_s"] = pointwise
        for k in curves:
            if k != "pointwise" and slow(k) > 0:
                points += [(calls[k][2] + n, slow(k, n) / slow(k)) for n in EVICTIONS[1:-1]]
    fields["code_keys_hot"], fields["code_keys_cold"] = _ramp(points)
    return {**fields, **library_cold(rounds)}


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    torch.set_num_threads(1)
    for key, value in cold_fields().items():
        print(f"{key} = {value:.4g}")
