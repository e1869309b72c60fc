"""What an eager op costs inside a training step against the same op run hot (docs/benchmarks.md,
fifteenth round; the evidence behind `dojo.sim.eager.in_cache`).

    .venv/bin/python bench/op_context.py [--models gpt,occupancy,mlp] [--rounds 7] [--code]
        [--sweep] [--stacks] [--by-target]

Per model (small preset, dp=1, FP32, one intra-op thread): every ATen call of one runtime step
(`Trainer.step`) is recorded below autograd (a `TorchDispatchMode`, with its arguments
cloned), then
- the step itself, its fastest thread CPU time over 15 steps;
- the recorded calls replayed in order, no autograd or Python modules around them ("sequence");
- each call run twice in a row inside that sequence: the first run finds the step's state in
  the caches, the second finds its own operands and code just used. Their difference per call
  ("penalty", the fastest of `--rounds` sequences each) is binned by the call's operand bytes,
  with its mean per KiB;
- the simulated step, with the device as `in_cache` finds it and hot (its cached figures);
- with `--by-target`, per ATen target (the simulator's top ones): the calls' repeats and first
  runs against the simulated hot time (fused groups together, as "fused").
`--code` also times three ops alone and with N distinct tiny ops (tiny operands: only their
code evicts) run between their calls: what code alone costs them. `--sweep` times them with
an in-place add over N MB between their calls (data evicts: the cache's edge). `--stacks`
times the calibration's dispatch stacks (`eager_stacks`, per counted op) each over and over,
as `calibrate_cpu` times them, and taking turns, each step right after the other stacks' (the
code of more kinds of op between two runs of one, as in a model's step).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

BINS = ((0, 1 << 10), (1 << 10, 10 << 10), (10 << 10, 30 << 10), (30 << 10, 100 << 10),
        (100 << 10, 300 << 10), (300 << 10, 1 << 40))
Call = tuple[Any, Any, Any]


def _snap(a: Any) -> Any:
    return a.detach().clone() if isinstance(a, torch.Tensor) else a


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        self.calls.append((func, tree_map(_snap, args), tree_map(_snap, kwargs)))
        return func(*args, **kwargs)


def _operand_bytes(call: Call) -> int:
    return sum(t.numel() * t.element_size() for t in tree_leaves(call[1:])
               if isinstance(t, torch.Tensor))


def measure(model: str, rounds: int) -> dict[str, Any]:
    """The figures of the module docstring for `model`, seconds and bytes."""
    from dojo.runtime import Job
    from dojo.runtime.job import build_bundle, simulate_job
    from dojo.runtime.trainer import Trainer
    from dojo.sim.simulate import all_chunk_times, device_model, prepare, simulate

    job = Job(model=model, plan="dp=1,precision=fp32", system="cpu")
    sim = simulate_job(job)
    trainer = Trainer(sim.program, build_bundle(job))
    for _ in range(3):
        trainer.step(trainer.data.get(trainer.position))
    recorder = _Recorder()
    with recorder:
        trainer.step(trainer.data.get(trainer.position))
    steps = []
    for _ in range(15):
        batch = trainer.data.get(trainer.position)
        start = time.thread_time()
        trainer.step(batch)
        steps.append(time.thread_time() - start)
    calls = recorder.calls
    sequence, first, second = float("inf"), [float("inf")] * len(calls), [float("inf")] * len(calls)
    clock = time.perf_counter
    for _ in range(rounds):
        start = time.thread_time()
        for func, args, kwargs in calls:
            func(*args, **kwargs)
        sequence = min(sequence, time.thread_time() - start)
        for i, (func, args, kwargs) in enumerate(calls):
            a = clock()
            func(*args, **kwargs)
            b = clock()
            func(*args, **kwargs)
            c = clock()
            first[i], second[i] = min(first[i], b - a), min(second[i], c - b)
    dev, memory, _ = prepare(sim.program)
    hot = device_model(sim.program)  # as `in_cache` leaves a device whose pass fits the cache
    hot_step = simulate(sim.program, (hot, memory, all_chunk_times(sim.program, hot, memory)))
    return {"calls": len(calls), "step": min(steps), "sequence": sequence,
            "first": first, "second": second, "bytes": [_operand_bytes(c) for c in calls],
            "names": [str(c[0]) for c in calls], "simulated": sim.result.step_time_s,
            "cold": dev.cold, "simulated_hot": hot_step.step_time_s,
            "by_target": _simulated_by_target(sim.program, hot)}


def _simulated_by_target(program: Any, dev: Any) -> dict[str, tuple[int, float]]:
    """Simulated (ops, seconds) per step by ATen target on device `dev` (fused groups under
    "fused"), forward and backward."""
    out: dict[str, tuple[int, float]] = {}
    for chunk in program.chunks:
        for ops, phase in ((chunk.forward, dev), (chunk.backward, dev.for_phase("backward"))):
            for op in ops:
                name = "fused" if op.target.startswith("fused[") else op.target.split("[")[0]
                n, t = out.get(name, (0, 0.0))
                out[name] = (n + program.microbatches, t + phase.op_time(op) * program.microbatches)
    return out


def by_target(m: dict[str, Any], top: int = 12) -> str:
    """The `top` targets by simulated (hot) time: calls, repeats' and first runs' sums against
    the simulated seconds, per step."""
    sums: dict[str, list[float]] = {}
    for name, a, b in zip(m["names"], m["first"], m["second"]):
        row = sums.setdefault(name, [0, 0.0, 0.0])
        row[0] += 1
        row[1] += b
        row[2] += a
    lines = ["| target | calls | repeats ms | first runs ms | simulated ops | simulated hot ms |",
             "|---|---|---|---|---|---|"]
    ranked = sorted(m["by_target"].items(), key=lambda kv: -kv[1][1])[:top]
    for name, (n, t) in ranked:
        calls, rep, first = sums.get(name, [0, 0.0, 0.0])
        lines.append(f"| {name} | {calls} | {rep * 1e3:.2f} | {first * 1e3:.2f} | {n} | "
                     f"{t * 1e3:.2f} |")
    return "\n".join(lines)


def report(model: str, m: dict[str, Any]) -> str:
    lines = [f"### {model}: {m['calls']} ATen calls per step",
             f"step {m['step'] * 1e3:.2f} ms; sequence replay {m['sequence'] * 1e3:.2f} ms; "
             f"first runs {sum(m['first']) * 1e3:.2f} ms, repeats {sum(m['second']) * 1e3:.2f} "
             f"ms; simulated {m['simulated'] * 1e3:.2f} ms ({'cold' if m['cold'] else 'hot'}), "
             f"hot {m['simulated_hot'] * 1e3:.2f} ms", "",
             "| operand bytes | calls | penalty median us | mean us | repeat median us | "
             "mean ns per KiB |", "|---|---|---|---|---|---|"]
    for lo, hi in BINS:
        sel = [i for i, b in enumerate(m["bytes"]) if lo <= b < hi]
        if not sel:
            continue
        pen = [m["first"][i] - m["second"][i] for i in sel]
        per_kib = statistics.mean(pen) / statistics.mean(m["bytes"][i] for i in sel) * 1024
        span = f"{lo >> 10}-{hi >> 10} KiB" if hi < 1 << 40 else f">= {lo >> 10} KiB"
        lines.append(f"| {span} | {len(sel)} | "
                     f"{statistics.median(pen) * 1e6:.2f} | {statistics.mean(pen) * 1e6:.2f} | "
                     f"{statistics.median(m['second'][i] for i in sel) * 1e6:.2f} | "
                     f"{per_kib * 1e9:.1f} |")
    return "\n".join(lines)


def code_eviction(counts: tuple[int, ...] = (0, 10, 20, 40), repeat: int = 400) -> str:
    """Lower-quartile microseconds of three ops with N distinct tiny ops run between calls."""
    from code_costs import tiny_ops

    tiny = tiny_ops()

    def between(n: int) -> Callable[[], None]:
        def run() -> None:
            for f in tiny[:n]:
                f()
        return run

    return _evicted(counts, [between(n) for n in counts], "N={} us", repeat)


def _evicted(settings: tuple[Any, ...], befores: list[Callable[[], object]], head: str,
             repeat: int) -> str:
    """A table of `_three_ops`' lower-quartile microseconds, each call right after
    `befores[i]` (untimed), per setting."""
    lines = ["| op | " + " | ".join(head.format(n) for n in settings) + " |",
             "|---|" + "---|" * len(settings)]
    for name, op in _three_ops().items():
        cells = []
        for before in befores:
            times = []
            for _ in range(repeat):
                before()
                start = time.perf_counter()
                op()
                times.append(time.perf_counter() - start)
            cells.append(f"{sorted(times)[repeat // 4] * 1e6:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _three_ops() -> dict[str, Callable[[], object]]:
    fn = torch.nn.functional
    x, w, h = torch.randn(1, 64, 64), torch.randn(256, 64), torch.randn(1, 64, 256)
    return {"layer_norm [1,64,64]": lambda: fn.layer_norm(x, (64,)),
            "linear 64 -> 256": lambda: fn.linear(x, w), "gelu [1,64,256]": lambda: fn.gelu(h)}


def data_eviction(sizes_mb: tuple[float, ...] = (0.5, 1, 2, 4, 8), repeat: int = 300) -> str:
    """Lower-quartile microseconds of three ops with an in-place add over N MB between calls."""
    junks = [torch.zeros(int(mb * (1 << 20)) // 4) for mb in sizes_mb]
    return _evicted(sizes_mb, [lambda j=j: j.add_(1.0) for j in junks], "{} MB us", repeat)


def stacks_in_turn(repeat: int = 100, rounds: int = 2) -> str:
    """Per counted op us (forward, backward) of each dispatch stack, hot and in turn."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from eager_stacks import _phase_times, _stacks, counted_ops, steps_in_turn

    stacks = _stacks()
    counts = {n: counted_ops(m, x) for n, (m, x) in stacks.items()}
    hot = {n: [float("inf")] * 2 for n in stacks}
    turn = {n: [float("inf")] * 2 for n in stacks}
    for _ in range(rounds):
        for n, (m, x) in stacks.items():
            hot[n] = [min(a, b) for a, b in zip(hot[n], _phase_times(m, x, repeat))]
        for n, pair in steps_in_turn(stacks, repeat).items():
            turn[n] = [min(a, b) for a, b in zip(turn[n], pair)]
    lines = ["| stack | hot fwd / bwd us per op | in turn fwd / bwd us per op |", "|---|---|---|"]
    for n in stacks:
        f, b = counts[n][0], counts[n][1]
        lines.append(f"| {n} | {hot[n][0] / f * 1e6:.2f} / {hot[n][1] / b * 1e6:.2f} | "
                     f"{turn[n][0] / f * 1e6:.2f} / {turn[n][1] / b * 1e6:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="gpt,occupancy,mlp")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--code", action="store_true")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--stacks", action="store_true")
    parser.add_argument("--by-target", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for model in filter(None, args.models.split(",")):
        measured = measure(model, args.rounds)
        print(report(model, measured), "\n")
        if args.by_target:
            print(by_target(measured), "\n")
    if args.code:
        print(code_eviction(), "\n")
    if args.sweep:
        print(data_eviction(), "\n")
    if args.stacks:
        print(stacks_in_turn())


if __name__ == "__main__":
    main()
