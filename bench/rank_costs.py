"""What a rank of the eager runtime's multi-rank plans costs its stepping thread beyond the
transfers (bench/calibrate_cpu.py, step 7): the `cpu` device's `tp_region_s`, `tp_vocab_*_s`,
`p2p_post_s` and `wait_resume_s` (docs/simulator.md, "The CPU closed loop").

- `tp_region_s`: Megatron's f and g around a tensor-parallel all-reduce
  (`dojo.runtime.tensor_parallel`: a custom autograd function, a `contiguous().clone()` of the
  reduced tensor, the function's node in the other phase), forward and backward together, with
  the all-reduce itself a no-op: a tiny linear with g after it (or f before it) against the bare
  linear, side by side, in one process; the mean of g's and f's.
- `tp_vocab_embedding_s`, `tp_vocab_loss_s`: the vocabulary-parallel embedding and cross
  entropy against the plain lookup and loss, the all-reduces no-ops (`vocab_parallel`).
- `p2p_post_s`: posting one pipeline send (`dist.isend` of a detached activation, as
  `dojo.runtime.pipeline` sends): its main-thread CPU, two processes.
- `wait_resume_s`: what a blocking wait on the other rank costs the thread's next work: a tiny
  eager training step (the MLP stack of `eager_stacks`) run right after a 1-element gloo
  all-reduce against the same step run right after itself, two processes in lockstep; the
  thread's CPU time of the step, not of the all-reduce (whose wall time the collective model
  holds). The thread sleeps while it waits, other threads (the peer's, gloo's, other jobs')
  run on its core, and it resumes with colder caches and predictors, or on the other core.
  It depends on what runs meanwhile: measure it on the machine as the ranks will find it.

Every figure is the minimum over repeats, the best of rounds, as in calibrate_cpu.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch


def _min_thread(fn: Callable[[], object], repeat: int) -> float:
    """Fastest thread-CPU seconds of `fn` over `repeat` calls (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        fn()
        best = min(best, time.thread_time() - start)
    return best


def tp_region(rounds: int = 3, repeat: int = 300) -> float:
    """Seconds of host time per tensor-parallel all-reduce region (see the module docstring)."""
    from dojo.runtime.tensor_parallel import _CopyToTP, _ReduceFromTP

    w = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(1, 4, 8, requires_grad=True)
    gy = torch.randn(1, 4, 8)
    group = object()  # never reaches gloo: the all-reduce is a no-op below
    cases: dict[str, Callable[[], object]] = {
        "bare": lambda: torch.autograd.grad(x @ w, (x, w), gy),
        "g": lambda: torch.autograd.grad(_ReduceFromTP.apply(x @ w, group), (x, w), gy),
        "f": lambda: torch.autograd.grad(_CopyToTP.apply(x, group) @ w, (x, w), gy)}
    best = _best_without_all_reduce(cases, rounds, repeat)
    return max(0.0, (best["g"] + best["f"]) / 2 - best["bare"])


def _best_without_all_reduce(cases: dict[str, Callable[[], object]], rounds: int,
                             repeat: int) -> dict[str, float]:
    """Each case's fastest thread-CPU seconds per call (`_min_thread`, best of `rounds`,
    the cases alternating) with `torch.distributed.all_reduce` a no-op meanwhile."""
    import torch.distributed as dist

    real = dist.all_reduce
    dist.all_reduce = lambda *a, **k: None  # type: ignore[assignment]
    try:
        best = {k: float("inf") for k in cases}
        for _ in range(rounds):
            for name, fn in cases.items():
                best[name] = min(best[name], _min_thread(fn, repeat))
    finally:
        dist.all_reduce = real
    return best


def vocab_parallel(rounds: int = 3, repeat: int = 300) -> tuple[float, float]:
    """(embedding s, loss s): host time per micro-batch of the vocabulary-parallel embedding
    and cross entropy (`dojo.runtime.vocab_parallel`: masks, an offset, a masked lookup, g;
    the loss's max, shift, gather, exp, sums and log in an autograd function) beyond the
    plain lookup and `F.cross_entropy` the program captures, forward and backward together,
    the all-reduces no-ops: tp rank 0 of 2 on a tiny vocabulary (16 ids, 8 features, 8
    tokens) against the whole one, side by side, in one process."""
    import torch.nn.functional as F

    from dojo.runtime.vocab_parallel import VocabParallelEmbedding, vocab_parallel_loss

    group = object()  # never reaches gloo: the all-reduces are no-ops below
    table = torch.nn.Embedding(16, 8)
    split = VocabParallelEmbedding(table, 0, 8, group, sp=False)
    tokens, gy = torch.randint(0, 16, (1, 8)), torch.randn(1, 8, 8)
    whole, half = torch.randn(1, 8, 16, requires_grad=True), torch.randn(1, 8, 8,
                                                                          requires_grad=True)
    loss = vocab_parallel_loss(0, group)
    cases: dict[str, Callable[[], object]] = {
        "lookup": lambda: torch.autograd.grad(F.embedding(tokens, table.weight), table.weight,
                                              gy),
        "split lookup": lambda: torch.autograd.grad(split(tokens), split.weight, gy),
        "loss": lambda: torch.autograd.grad(F.cross_entropy(whole.reshape(-1, 16),
                                                            tokens.reshape(-1)), whole),
        "split loss": lambda: torch.autograd.grad(loss(half, tokens), half)}
    best = _best_without_all_reduce(cases, rounds, repeat)
    return (max(0.0, best["split lookup"] - best["lookup"]),
            max(0.0, best["split loss"] - best["loss"]))


def _rank(rank: int, world: int, rounds: int, repeat: int) -> tuple[float, float, float]:
    """(post s, step after a step s, step after a wait s) on this rank (see `rank_costs`)."""
    import sys
    from pathlib import Path

    import torch.distributed as dist

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from eager_stacks import _loss, _stacks

    model, x = _stacks()["mlp"]
    one, act = torch.ones(1), torch.randn(1, 64, 64)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        _loss(model(x)).backward()

    post = after_step = after_wait = float("inf")
    for _ in range(rounds):
        dist.barrier()
        after_step = min(after_step, _min_thread(step, repeat))
        dist.barrier()
        for _ in range(repeat):
            dist.all_reduce(one)  # both ranks in lockstep: each waits on the other's message
            start = time.thread_time()
            step()
            after_wait = min(after_wait, time.thread_time() - start)
        dist.barrier()
        for i in range(repeat // 4):
            if rank == 0:
                start = time.thread_time()
                work = dist.isend(act.detach().contiguous(), dst=1, tag=i)
                post = min(post, time.thread_time() - start)
                work.wait()
            else:
                dist.recv(torch.empty(act.shape), src=0, tag=i)
    return post, after_step, after_wait


def rank_costs(rounds: int = 3, repeat: int = 200) -> tuple[float, float]:
    """(`p2p_post_s`, `wait_resume_s`) between two local gloo processes (module docstring)."""
    from dojo.runtime.launch import launch

    out: list[Any] = launch(_rank, 2, (rounds, repeat), timeout_s=300, threads=1)
    post = out[0][0]
    # every rank waits at every collective (the early one longer): the mean of the two
    return post, sum(max(0.0, wait - step) for _, step, wait in out) / len(out)


def _co_rank(rank: int, world: int, rounds: int, repeat: int) -> float:
    """Rank 0: its tiny eager step's fastest thread CPU with rank 1 running the same steps
    over the ratio with rank 1 asleep (alternating, side by side); rank 1: 0."""
    import sys
    from pathlib import Path

    import torch.distributed as dist

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from eager_stacks import _loss, _stacks

    model, x = _stacks()["mlp"]

    def step() -> None:
        model.zero_grad(set_to_none=True)
        _loss(model(x)).backward()

    best = {"alone": float("inf"), "together": float("inf")}
    for _ in range(rounds):
        for mode in best:
            dist.barrier()
            if rank == 0:
                best[mode] = min(best[mode], _min_thread(step, repeat))
            elif mode == "together":
                for _ in range(3 * repeat):  # outlasts rank 0's loop
                    step()
            dist.barrier()
    return best["together"] / best["alone"] if rank == 0 else 0.0


def co_run_slowdown(rounds: int = 3, repeat: int = 300) -> float:
    """How much slower one rank's eager work runs (its thread's CPU time) while a second rank
    runs the same work on the machine than while it sleeps: 1 where the cores are independent.
    Printed by calibrate_cpu, not a calibration field: on a loaded machine the "alone" case
    has other jobs beside it too, so it only means something measured on a quiet one."""
    from dojo.runtime.launch import launch

    return float(launch(_co_rank, 2, (rounds, repeat), timeout_s=300, threads=1)[0])


# Tiny eager training steps between two collectives (~0.4 ms each here): 0 to ~7 ms of work.
LOCKSTEP_UNITS = (0, 1, 2, 4, 8, 16)
LOCKSTEP_ELEMENTS = 4096  # FP32 elements per all-reduce: a small preset's tp activation, 16 KB


def _lockstep_rank(rank: int, world: int, rounds: int, iters: int, window_s: float
                   ) -> list[tuple[float, float]]:
    """(wall s of the work alone, wall s of the work then one all-reduce) per
    `LOCKSTEP_UNITS`: each the fastest mean over a window of consecutive iterations about
    `window_s` long (`window_iterations`), best of `rounds`, the two cases alternating. The
    work: the MLP stack's tiny training step (`eager_stacks`), what a rank's phase runs:
    dispatch, autograd, small kernels."""
    import sys
    from pathlib import Path


    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from eager_stacks import _loss, _stacks

    model, x = _stacks()["mlp"]
    buf = torch.ones(LOCKSTEP_ELEMENTS)

    def work(units: int) -> None:
        for _ in range(units):
            model.zero_grad(set_to_none=True)
            _loss(model(x)).backward()

    work(20)
    windows = [window_iterations(lambda u=units: work(u), window_s) for units in LOCKSTEP_UNITS]
    best = [[float("inf"), float("inf")] for _ in LOCKSTEP_UNITS]
    for _ in range(rounds):
        for i, units in enumerate(LOCKSTEP_UNITS):
            for case in (0, 1):
                wall = windowed_wall(lambda u=units: work(u), buf if case else None, iters,
                                     windows[i])
                best[i][case] = min(best[i][case], wall)
    return [(alone, locked) for alone, locked in best]


def window_iterations(work: Any, window_s: float, most: int = 20) -> int:
    """Consecutive iterations of `work` (its fastest of 5 runs, alone) that make a window
    about `window_s` long: from 1 (work longer than the window) to `most`.

    The closed loop compares the simulation with a step's fastest run (bench_cpu_loop), in
    which neither rank was preempted; a fixed count of 20 iterations made the windows of the
    longer work 100-250 ms long, and on a VM whose host steals ~12 % of each vCPU in bursts
    (`steal` in /proc/stat) every such window held preemptions of one rank or the other that
    the other then waited out: 4.5 ms of excess at 13 ms of work against 2.3 ms in windows of
    one step's length (docs/benchmarks.md, nineteenth round)."""
    fastest = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        work()
        fastest = min(fastest, time.perf_counter() - t0)
    return max(1, min(most, round(window_s / max(fastest, 1e-9))))


def windowed_wall(work: Any, buf: torch.Tensor | None, iters: int, window: int) -> float:
    """Seconds of one iteration (`work()`, then an all-reduce of `buf` unless None), the
    fastest mean over `window` consecutive ones of `iters`, started after a barrier."""
    import torch.distributed as dist

    dist.barrier()
    walls = []
    for _ in range(iters):
        t0 = time.perf_counter()
        work()
        if buf is not None:
            dist.all_reduce(buf)
        walls.append(time.perf_counter() - t0)
    return min(sum(walls[j:j + window]) / window for j in range(0, iters - window + 1, window))


# A lockstep point's window: about one step of a small preset in the closed loop (2-50 ms;
# a step's collectives are a run within it, so the window spans tens of them at no work).
LOCKSTEP_WINDOW_S = 0.010


def lockstep(rounds: int = 3, iters: int = 120, window_s: float = LOCKSTEP_WINDOW_S,
             resume: float = 0.0, launches: int = 1
             ) -> tuple[float, float, float, list[tuple[float, float]]]:
    """(seconds per collective at no work between, jitter in s^0.5, wake-up s, points) of two
    gloo ranks in lockstep: each runs some eager work, then a 16 KB all-reduce, over and over.
    What a collective adds to the wall beyond the work: the first figure with no work
    between; with w seconds of work between, the wake-up and `jitter` x sqrt(w) more
    (`fit_lockstep`). `points`: (wall s of the work alone, wall s in lockstep), the mean of
    the two ranks and of `launches` pairs of processes (one pair's excess with no work
    between read 170-217 us a minute apart on the twentieth round's VM: where the two land
    on the host moves it)."""
    from dojo.runtime.launch import launch

    runs = []
    for _ in range(launches):
        out: list[Any] = launch(_lockstep_rank, 2, (rounds, iters, window_s), timeout_s=600,
                                threads=1)
        runs.append([((r0[0] + r1[0]) / 2, (r0[1] + r1[1]) / 2)
                     for r0, r1 in zip(out[0], out[1])])
    points = [(sum(p[0] for p in level) / len(level), sum(p[1] for p in level) / len(level))
              for level in zip(*runs)]
    return (*fit_lockstep(points, resume), points)


def fit_lockstep(points: list[tuple[float, float]], resume: float = 0.0
                 ) -> tuple[float, float, float]:
    """(excess s at no work, jitter s^0.5, wake-up s) of lockstep `points` (wall s of the work
    alone, wall s in lockstep; the first with no work): the excess (lockstep minus alone) of
    the first point; over the others, the least-squares line of (excess - first - `resume`)
    against sqrt(work): its intercept the wake-up, its slope the jitter. Back-to-back
    collectives find their peer there; after any work the rank that arrived first has slept
    and is woken (a step at w > 0), and two ranks whose work jitters as a random walk arrive
    apart by a spread in proportion to sqrt(w), for which the earlier waits; the work after a
    wait pays `resume` more, `wait_resume_s`, which the first point has no work to pay. With a
    negative slope (the drift lost in the machine's noise) the jitter is 0 and the wake-up
    the mean; with fewer than two points with work, the one gives the jitter alone. Measured
    over 0-6.5 ms of work (twentieth round) the excess rises from ~175 us with none to ~330
    at 0.4 ms and flattens by 3 ms, which one sqrt(w) through the first point (the earlier
    fit) read 200 us high at 6.5 ms, and 40-50 us below what a collective of gpt's and
    vit-b16's tp=2 steps costs in place at 0.2 ms of work between."""
    extra = [(alone, locked - alone) for alone, locked in points]
    base = extra[0][1]
    xs = [math.sqrt(x) for x, _ in extra[1:] if x > 0]
    ys = [y - base - resume for x, y in extra[1:] if x > 0]
    if not xs:
        return base, 0.0, 0.0
    if len(xs) == 1:
        return base, max(0.0, ys[0] / xs[0]), 0.0
    from gemm_pack import fit_line

    wake, slope = fit_line(xs, ys)
    if slope <= 0:
        return base, 0.0, max(0.0, sum(ys) / len(ys))
    if wake < 0:  # through the origin: no step
        return base, max(0.0, sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs)), 0.0
    return base, slope, wake
