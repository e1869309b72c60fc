"""Calibrate the simulator's `cpu` device on this machine: one core (one intra-op thread, as
every rank of `dojo run` uses), FP32, eager PyTorch. Each figure is a micro-benchmark; the zoo's
training steps are left for the out-of-sample check (bench/bench_cpu_loop.py).

1. GEMM throughput over square sizes: the best rate is the device's peak, the half-efficiency
   FLOPs are fitted to the small sizes; 3x3 convolutions as a fraction of that rate. First,
   what a GEMM pays per call per byte of its weight whatever its rows (bench/gemm_pack.py:
   the BLAS packs the weight), taken off the square sizes' times before those fits.
   1b. What a GEMM pays when its operands come from memory (a pass beyond the caches), per
   call and per byte, the GEMMs of a transformer MLP's forward and backward over distinct
   weights beyond the L3 against the same calls hot (bench/gemm_cold.py).
2. Elementwise add over working-set sizes: memory bandwidth (sets far beyond the last-level
   cache), cache bandwidth and the largest set that still streams at it.
3. Eager dispatch: forward and backward of tiny stacks of two residual blocks each (a
   transformer MLP block, an attention block with its head views, a conv-BN-ReLU unit), whose
   kernels take well under a microsecond, each phase divided by the ops the simulator counts
   for it (dojo's own capture, one per non-view ATen op): seconds per forward op as eager
   PyTorch issues it from nn.Module code (module calls and views included), and per backward
   op as autograd's engine issues it (its nodes, view backwards and the backward call
   included). A fourth stack of elementwise ops called as functions (RMSNorm- and SwiGLU-like
   code) gives an elementwise op's dispatch per phase (`launch_pointwise_s`, much less than a
   module's op); the other three stacks' figures are net of their own elementwise ops at
   that rate, the median of the three per phase (`launch_s`, `launch_backward_s`).
   What a cold call site costs (`cold_*`, `code_keys_*`: bench/code_costs.py, the stacks
   stepped with 0-60 distinct tiny ops between their steps), and a oneDNN call's own cold
   cost (`cold_library_*`, `cold_eltwise_*`: the call timed by itself hot and after those
   ops, against a twin that does not go to oneDNN).
4. Vector kernels (GELU and its backward, LayerNorm, softmax, log-softmax, sum, ...) on a
   cache-resident tensor: the FLOPs dojo's capture counts for them per second, for those that
   are compute-bound; the median as a fraction of the peak.
   Transcendental pointwise kernels (GELU, erf, exp, SiLU...) in counted FLOP per element
   against the norms and softmax (`pointwise_weights`): what dojo.capture.costs'
   `_POINTWISE_WEIGHT` ships; printed beside it, not written (the capture is code, not data).
5. The optimizer step outside its kernels (and, printed only, what accumulating into existing
   gradients costs a backward: `eager_stacks.accumulate_cost`): fused AdamW plus the
   runtime's two zero_grad calls over 4 and 68 tiny tensors: a fixed part and a part per
   parameter tensor (the simulator's `host_step_time`; see docs/simulator.md for what it
   still needs), and the step's walks over the model's modules (`module_walk_s`,
   bench/module_walk.py). Likewise the runtime's data-parallel gradient sync outside its
   all-reduce (packing into one flat buffer, scaling, unpacking:
   `dojo.sim.eager.sync_host_time`). And
   oneDNN's setup per convolution call: a tiny convolution of 2 images (oneDNN) against 1
   image (im2col), side by side; and a
   convolution's own fixed work per call, whatever its backend: a tiny one-image convolution
   against a tiny matmul (one counted op each per phase), side by side; and the im2col path's
   unfolding per element of its columns matrix, forward and backward, from two one-image
   convolutions whose columns differ 6x, net of their GEMMs (bench/conv_costs.py); and CPU
   flash attention's work per score element beyond its modelled GEMMs, forward and backward,
   from three small causal shapes (bench/attention_costs.py).
6. gloo on loopback between two processes: all-reduce time over message sizes; latency per
   message and bandwidth (t(n) = 2 alpha + n / bw for two members, as the ring model has it).

7. What a rank of a multi-rank plan costs its stepping thread beyond the transfers
   (`rank_costs`): Megatron's f/g around a tp all-reduce (`tp_region_s`), the
   vocabulary-parallel embedding and cross entropy against the plain ones
   (`tp_vocab_embedding_s`, `tp_vocab_loss_s`), posting a pipeline send (`p2p_post_s`), the
   slower work after a blocking wait on the other rank (`wait_resume_s`); two ranks in
   lockstep, some eager work then a 16 KB all-reduce over and over: the wall per collective
   beyond its modelled transfer, and the wait for the later rank, which drifts from the
   earlier in proportion to sqrt(work between) (`lockstep_wait_s`, `lockstep_jitter`;
   `rank_costs.lockstep`); and, printed only, how much a second rank working beside one
   slows it (`co_run_slowdown`, meaningful on a quiet machine).

`fast_fields` (steps 3, 5, 7) and `throughput_fields` (1, 2, 4, 6) return the figures as
`cpu.toml` fields (bench/bench_cpu_loop.py --recalibrate uses them); `--write` writes both files
(bench/calibration_files.py), `--write-fields a,b` only those fields of `cpu.toml`.
Every time is the minimum over repeats (the standard way to time on a shared machine), and
each curve the best of `--rounds` passes.
Run: .venv/bin/python bench/calibrate_cpu.py [--write | --write-fields F,G] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench modules
from conv_costs import (
    _best,
    conv_call_overhead,
    conv_ratio,
    eltwise_setup,
    im2col_costs,
    onednn_setup,
)

ROOT = Path(__file__).resolve().parent.parent
THREADS = 1  # what each `dojo run` rank uses (dojo.runtime.launch)


def gemm_curve() -> list[tuple[float, float]]:
    """(FLOP, FLOP/s) of square FP32 GEMMs."""
    out = []
    for n in (32, 64, 128, 256, 384, 512, 768):
        a, b = torch.randn(n, n), torch.randn(n, n)
        t = _best(lambda a=a, b=b: torch.mm(a, b), 9)
        out.append((2.0 * n**3, 2.0 * n**3 / t))
    return out


def unpacked(curve: list[tuple[float, float]], pack_byte_s: float) -> list[tuple[float, float]]:
    """`gemm_curve`'s (FLOP, FLOP/s) with each square GEMM's packing, `pack_byte_s` per byte
    of its n x n FP32 weight, taken off its time (points it would leave with no time kept)."""
    out = []
    for flops, rate in curve:
        n = (flops / 2) ** (1 / 3)
        t = flops / rate - pack_byte_s * 4 * n * n
        out.append((flops, flops / t if t > 0 else rate))
    return out


def fit_half(curve: list[tuple[float, float]], peak: float) -> float:
    """F_half minimising the squared error of eff(F) = F / (F + F_half) in log space."""
    best, best_err = 0.0, float("inf")
    for exp in range(40, 110):
        half = 10 ** (exp / 10)
        err = sum((rate / peak - f / (f + half)) ** 2 for f, rate in curve)
        if err < best_err:
            best, best_err = half, err
    return best


def stream_curve() -> list[tuple[float, float]]:
    """(bytes moved, seconds) of FP32 `add(x, y, out=z)` from 12 KiB to 192 MiB of traffic, in
    steps of sqrt(2): a last-level cache's edge falls between two points (powers of two alone
    put it at 12.6 or 25.2 MB from one run to the next on a 32 MiB L3)."""
    out = []
    for half in range(20, 49):
        n = round(2 ** (half / 2))
        x, y, z = torch.randn(n), torch.randn(n), torch.empty(n)
        t = _best(lambda x=x, y=y, z=z: torch.add(x, y, out=z), 9 if half < 40 else 3)
        out.append((12.0 * n, t))
    return out


def fit_stream(curve: list[tuple[float, float]]) -> tuple[float, float, float]:
    """(memory B/s, cache B/s, cache bytes) from `stream_curve`. The fixed cost of an add (its
    dispatch: the two smallest adds extrapolated to 0 bytes) is taken off every point that
    takes at least 4x as long (shorter ones are mostly dispatch); memory is the rate of the
    largest set, cache the best rate; the cache holds the largest set still above the
    geometric mean of the two."""
    (n0, t0), (n1, t1) = curve[:2]
    fixed = max(0.0, t0 - n0 * (t1 - t0) / (n1 - n0))
    rates = [(n, n / (t - fixed)) for n, t in curve if t >= 4 * fixed]
    memory = rates[-1][1]
    cache = max(r for _, r in rates)
    cut = (memory * cache) ** 0.5
    size = max((n for n, r in rates if r >= cut), default=0.0)
    return memory, cache, size


def _vector_ops(x: torch.Tensor) -> dict[str, tuple[object, tuple[object, ...]]]:
    """ATen overloads and arguments of the vector kernels small models run, on `x` [64, 256]."""
    aten = torch.ops.aten
    w, g = torch.ones(x.shape[-1]), torch.randn_like(x)
    return {"gelu": (aten.gelu.default, (x,)),
            "gelu_backward": (aten.gelu_backward.default, (g, x)),
            "layer_norm": (aten.native_layer_norm.default, (x, [x.shape[-1]], w, w, 1e-5)),
            "log_softmax": (aten._log_softmax.default, (x, -1, False)),
            "softmax": (aten._softmax.default, (x, -1, False)),
            "mul": (aten.mul.Tensor, (x, g)), "add": (aten.add.Tensor, (x, g)),
            "relu": (aten.relu.default, (x,)), "sum": (aten.sum.dim_IntList, (x, [0]))}


def vector_rates(cache: float) -> dict[str, float]:
    """Counted FLOP/s (dojo.capture.costs.flops_of) of the vector kernels of `_vector_ops` that
    are compute-bound on a cache-resident [64, 256] FP32 tensor (net of dispatch, a 1-element
    add, they take over twice their bytes at the `cache` B/s); the others stream."""
    from dojo.capture.costs import flops_of, nbytes

    one = torch.randn(1)
    dispatch = _best(lambda: torch.ops.aten.add.Tensor(one, one), 50)
    rates = {}
    for name, (op, args) in _vector_ops(torch.randn(64, 256)).items():
        out = op(*args)  # type: ignore[operator]
        outs = list(out) if isinstance(out, tuple) else [out]
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        flops, _ = flops_of(op, args, {}, out, tensors, outs[:1])
        moved = sum(nbytes(t) for t in tensors + outs)
        net = _best(lambda op=op, args=args: op(*args), 50) - dispatch  # type: ignore[operator]
        if flops and net > 2 * moved / cache:
            rates[name] = flops / net
    return rates


def _pointwise_kernels(cols: int) -> tuple[dict[str, tuple[int, Callable[[], object]]],
                                             dict[str, Callable[[], object]]]:
    """(norms and softmax with their counted FLOP per element, transcendental kernels) on
    [64, cols] FP32 tensors."""
    aten = torch.ops.aten
    x, w = torch.randn(64, cols), torch.ones(cols)
    g = torch.randn_like(x)
    refs: dict[str, tuple[int, Callable[[], object]]] = {
        "softmax": (4, lambda: aten._softmax.default(x, -1, False)),
        "log_softmax": (4, lambda: aten._log_softmax.default(x, -1, False)),
        "softmax_backward": (3, lambda: aten._softmax_backward_data.default(
            g, x, -1, torch.float32)),
        "layer_norm": (5, lambda: aten.native_layer_norm.default(x, [cols], w, w, 1e-5))}
    kernels: dict[str, Callable[[], object]] = {
        "gelu": lambda: aten.gelu.default(x),
        "gelu_backward": lambda: aten.gelu_backward.default(g, x),
        "gelu_tanh": lambda: aten.gelu.default(x, approximate="tanh"),
        "gelu_tanh_backward": lambda: aten.gelu_backward.default(g, x, approximate="tanh"),
        "erf": lambda: aten.erf.default(x), "exp": lambda: aten.exp.default(x),
        "tanh": lambda: aten.tanh.default(x), "sigmoid": lambda: aten.sigmoid.default(x),
        "silu": lambda: aten.silu.default(x),
        "silu_backward": lambda: aten.silu_backward.default(g, x)}
    return refs, kernels


def pointwise_weights(rounds: int = 3) -> dict[str, float]:
    """Measured FLOP per element of transcendental pointwise kernels (GELU, erf, exp, SiLU...):
    each kernel's seconds per element (net of dispatch, a 1-element add) over the seconds per
    counted FLOP of the norms and softmax (their counts are arithmetic: dojo.capture.costs),
    the median of those four; per kernel the geometric mean over [64, 256] and [64, 1024] FP32
    tensors (cache-resident), each the best of `rounds` passes. What `_POINTWISE_WEIGHT` ships."""
    one = torch.randn(1)
    measured: dict[str, list[float]] = {}
    for cols in (256, 1024):
        refs, kernels = _pointwise_kernels(cols)
        timed = list(kernels.items()) + [(k, f) for k, (_, f) in refs.items()]
        best: dict[str, float] = {}
        for _ in range(rounds):
            dispatch = _best(lambda: torch.ops.aten.add.Tensor(one, one), 200)
            for name, fn in timed:
                t = max(1e-12, _best(fn, 200) - dispatch) / (64 * cols)
                best[name] = min(t, best.get(name, t))
        per_flop = statistics.median(best[k] / c for k, (c, _) in refs.items())
        for name in kernels:
            measured.setdefault(name, []).append(best[name] / per_flop)
    return {k: statistics.geometric_mean(v) for k, v in measured.items()}


def optimizer_overhead(repeat: int = 200) -> tuple[float, float]:
    """(fixed s, s per parameter tensor) of a fused AdamW step plus the runtime's two
    zero_grad calls (model and optimizer, set_to_none), on tiny tensors (no kernel time)."""
    def timed(n: int) -> float:
        params = [torch.nn.Parameter(torch.randn(16)) for _ in range(n)]
        model = torch.nn.ParameterList(params)
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, fused=True)
        best = float("inf")
        for _ in range(repeat):
            for q in params:
                q.grad = torch.ones(16)
            start = time.perf_counter()
            model.zero_grad(set_to_none=False)  # keeps the grads; walks them as zero_grad does
            opt.step()
            opt.zero_grad(set_to_none=True)
            best = min(best, time.perf_counter() - start)
        return best

    few, many = timed(4), timed(68)
    per = max(0.0, (many - few) / 64)
    return max(0.0, few - 4 * per), per


def grad_sync_overhead(repeat: int = 200) -> tuple[float, float]:
    """(fixed s, s per parameter tensor) of the runtime's data-parallel gradient sync outside
    its collective (`dojo.runtime.trainer._all_reduce_grads` with the all-reduce itself a no-op:
    packing, scaling, unpacking), on tiny tensors (no streaming time)."""
    import torch.distributed as dist

    from dojo.runtime.trainer import _all_reduce_grads

    def timed(n: int) -> float:
        params = [torch.nn.Parameter(torch.randn(16)) for _ in range(n)]
        best = float("inf")
        for _ in range(repeat):
            for q in params:
                q.grad = torch.ones(16)
            start = time.perf_counter()
            _all_reduce_grads(params, None, scale=0.5)
            best = min(best, time.perf_counter() - start)
        return best

    real = dist.all_reduce
    dist.all_reduce = lambda *a, **k: None  # type: ignore[assignment]
    try:
        few, many = timed(4), timed(68)
    finally:
        dist.all_reduce = real
    per = max(0.0, (many - few) / 64)
    return max(0.0, few - 4 * per), per


def _gloo_rank(rank: int, world: int, sizes: list[int], repeat: int) -> list[float]:
    """Best seconds of one all-reduce of each size (FP32 elements) on this rank (gloo)."""
    import torch.distributed as dist

    out = []
    for n in sizes:
        buf = torch.ones(n)
        samples = []
        for _ in range(repeat):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(buf)
            samples.append(time.perf_counter() - start)
        out.append(min(samples))
    return out


def gloo_fit(rounds: int = 1) -> tuple[float, float, list[tuple[int, float]]]:
    """(seconds per message step alpha, bytes/s, curve) of gloo all-reduce between two local
    processes: t(n) = 2 alpha + n / bw (ring of two; link latency 0 in the system file). Per
    size the fastest of `rounds` pairs of processes: one pair's figures move 1.3-1.9x between
    invocations seconds apart (the same 4-byte all-reduce 127-241 us on the Zen 4 VM of
    docs/benchmarks.md, eighteenth round), as the other figures' do (`_rounds`)."""
    from dojo.runtime.launch import launch

    sizes = [1, 1 << 10, 1 << 14, 1 << 18, 1 << 20]

    def measure() -> list[tuple[float, float]]:
        times = launch(_gloo_rank, 2, (sizes, 30), timeout_s=120, threads=THREADS)
        return [(4 * n, max(a, b)) for n, a, b in zip(sizes, times[0], times[1])]

    curve = [(int(n), t) for n, t in _rounds(measure, rounds, min)]
    alpha = curve[0][1] / 2
    bw = curve[-1][0] / max(curve[-1][1] - curve[0][1], 1e-9)
    return alpha, bw, curve


def _rounds(measure: Callable[[], list[tuple[float, float]]], rounds: int,
            best: Callable[..., float]) -> list[tuple[float, float]]:
    """`measure` run `rounds` times (a shared machine's load comes and goes over seconds):
    per point, the `best` (min of times, max of rates) of its values."""
    curves = [measure() for _ in range(rounds)]
    return [(points[0][0], best(v for _, v in points)) for points in zip(*curves)]


def committed_link() -> tuple[float, float]:
    """(collective_latency_s, gloo bytes/s) of the committed `cpu` calibration and system."""
    import tomllib

    from dojo.sim.costs import load_calibration

    system = tomllib.loads((ROOT / "src/dojo/hardware/systems/cpu.toml").read_text("utf-8"))
    return load_calibration("cpu").collective_latency_s, system["server"]["link"]["bytes_per_s"]


def lockstep_fields(rounds: int, link: tuple[float, float], resume: float = 0.0
                    ) -> dict[str, float]:
    """`lockstep_*` (`rank_costs.lockstep`): a collective's wall with no work between, net of
    the modelled transfer of the benchmark's all-reduce (2 alpha + bytes / bw, `link` = (alpha,
    bw)); the jitter of the work between and the wake-up after it."""
    from rank_costs import LOCKSTEP_ELEMENTS, lockstep

    # at least five rounds: each point is the fastest window of all of them, and a shared
    # machine's slow spells last seconds (the jitter moved 0.0064-0.0158 s^0.5 at three)
    alone, jitter, wake, points = lockstep(max(rounds, 5), resume=resume, launches=3)
    print("lockstep (work alone us, excess us): "
          + ", ".join(f"({x * 1e6:.0f}, {(y - x) * 1e6:.0f})" for x, y in points), file=sys.stderr)
    modelled = 2 * link[0] + 4 * LOCKSTEP_ELEMENTS / link[1]
    return {"lockstep_wait_s": max(0.0, alone - modelled), "lockstep_jitter": min(jitter, 1.0),
            "lockstep_wake_s": wake}


def fast_fields(rounds: int, link: tuple[float, float] | None = None
                ) -> tuple[dict[str, float], dict[str, Any]]:
    """The calibration's dispatch and host figures (steps 3, 5 and 7: ~30 s), which move most
    between invocations on a shared machine: `sim/calibration/cpu.toml` field -> value, and
    the eager stacks' per-stack figures for the summary. `link`: (alpha s, bytes/s) of gloo
    as measured now (default: the committed files')."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from attention_costs import score_costs
    from code_costs import cold_fields
    from eager_stacks import eager_op_times
    from module_walk import module_walk
    from rank_costs import rank_costs, tp_region, vocab_parallel

    conv_call = conv_call_overhead()
    eltwise = eltwise_setup()
    stacks = eager_op_times(conv_call=conv_call, eltwise=eltwise)
    others = [v for k, v in stacks.items() if k not in ("pointwise", "view")]
    opt_fixed, opt_tensor = min(optimizer_overhead() for _ in range(rounds))
    sync_fixed, sync_tensor = min(grad_sync_overhead() for _ in range(rounds))
    library = onednn_setup()
    scores = score_costs(rounds)
    post, resume = rank_costs(rounds)
    vocab = vocab_parallel(rounds)
    return {"launch_s": statistics.median(f for f, _, _, _ in others),
            "launch_backward_s": statistics.median(b for _, b, _, _ in others),
            "launch_pointwise_s": stacks["pointwise"][0],
            "launch_pointwise_backward_s": stacks["pointwise"][1],
            "launch_view_s": stacks["view"][0],
            "library_call_s": library[0], "library_call_backward_s": library[1],
            "eltwise_call_s": eltwise[0], "eltwise_call_backward_s": eltwise[1],
            "conv_call_s": conv_call[0], "conv_call_backward_s": conv_call[1],
            "attention_score_s": scores[0], "attention_score_backward_s": scores[1],
            "optimizer_step_s": opt_fixed, "optimizer_tensor_s": opt_tensor,
            "module_walk_s": module_walk(rounds),
            "grad_sync_s": sync_fixed, "grad_sync_tensor_s": sync_tensor,
            "tp_region_s": tp_region(rounds), "p2p_post_s": post,
            "tp_vocab_embedding_s": vocab[0], "tp_vocab_loss_s": vocab[1],
            "wait_resume_s": resume, **lockstep_fields(rounds, link or committed_link(), resume),
            **cold_fields(rounds)}, {"stacks": stacks}


def throughput_fields(rounds: int) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    """The calibration's rates (steps 1, 2, 4 and 6): calibration fields, the system file's
    fields (`peak`, `memory`, `link`: FLOP/s and bytes/s) and the curves for the summary."""
    from gemm_pack import pack_cost

    pack = min(pack_cost() for _ in range(rounds))
    # The square GEMMs net of their weight's packing (`DeviceModel.pack_time` charges it per
    # call), so the peak and F_half do not count it twice.
    curve = unpacked(_rounds(gemm_curve, rounds, max), pack)
    peak = max(rate for _, rate in curve)
    memory, cache, cache_bytes = fit_stream(_rounds(stream_curve, rounds, min))
    rates: dict[str, float] = {}
    for _ in range(rounds):
        for name, rate in vector_rates(cache).items():
            rates[name] = max(rate, rates.get(name, 0.0))
    alpha, link, gloo = gloo_fit(rounds)
    half, conv = fit_half(curve, peak), max(conv_ratio(peak) for _ in range(rounds))
    unfold = im2col_costs(peak, half, conv, rounds)
    from gemm_cold import memory_gemm_costs

    memory_call, memory_byte, _ = memory_gemm_costs(rounds)
    print(f"GEMM operands from memory: {memory_call * 1e6:.2f} us per call, "
          f"{memory_byte * 1e9:.4f} ns per byte", file=sys.stderr)
    fields = {"matrix_half_flops": half, "collective_latency_s": alpha,
              "matrix_pack_byte_s": pack,
              "matrix_memory_call_s": memory_call, "matrix_memory_byte_s": memory_byte,
              "conv_efficiency": conv,
              "im2col_element_s": unfold[0], "im2col_element_backward_s": unfold[1],
              "cache_bytes": cache_bytes, "cache_bytes_per_s": cache,
              "vector_compute_efficiency": statistics.median(rates.values()) / peak}
    return (fields, {"peak": peak, "memory": memory, "link": link},
            {"curve": curve, "rates": rates, "gloo": gloo})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true", help="write the calibration files")
    parser.add_argument("--write-fields", default="",
                        help="comma-separated cpu.toml fields: write only these (measured now)")
    parser.add_argument("--rounds", type=int, default=3, help="repeat each curve, keep the best")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    from steal import cpu_times, steal_share

    start = cpu_times()
    rates, system, shown = throughput_fields(args.rounds)
    fast, info = fast_fields(args.rounds, (rates["collective_latency_s"], system["link"]))
    fields = {**rates, **fast}
    stolen = steal_share(start, cpu_times())
    print(f"machine: {platform.processor() or platform.machine()}, {THREADS} thread(s), "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}"
          + (f", host steal while measuring {stolen:.1%}" if stolen is not None else ""))
    print("| GEMM FLOP | GFLOP/s (net of packing) |\n|---|---|")
    for f, rate in shown["curve"]:
        print(f"| {f:.3g} | {rate / 1e9:.1f} |")
    print("\n| vector kernel | counted GFLOP/s |\n|---|---|")
    for name, rate in shown["rates"].items():
        print(f"| {name} | {rate / 1e9:.2f} |")
    from dojo.capture.costs import _POINTWISE_WEIGHT

    print("\n| pointwise kernel | measured FLOP/element | shipped |\n|---|---|---|")
    for name, weight in pointwise_weights(args.rounds).items():
        print(f"| {name} | {weight:.1f} | {_POINTWISE_WEIGHT.get(name, 1)} |")
    print("\n| all-reduce bytes | gloo us |\n|---|---|")
    for n, t in shown["gloo"]:
        print(f"| {n} | {t * 1e6:.1f} |")
    print(f"\npeak {system['peak'] / 1e9:.1f} GFLOP/s, memory {system['memory'] / 1e9:.2f} GB/s,"
          f" gloo {system['link'] / 1e9:.2f} GB/s; eager stacks: "
          + ", ".join(f"{k} {f * 1e6:.1f} us/{nf} + {b * 1e6:.1f} us/{nb} ops"
                      for k, (f, b, nf, nb) in info["stacks"].items()))
    from eager_stacks import accumulate_cost
    from rank_costs import co_run_slowdown

    print("\ngradient accumulation beyond a fresh backward (not written: the add's bytes at "
          "the cache rate, no dispatch): " + ", ".join(
              f"{n} parameters {t * 1e6:.1f} us per tensor"
              + (f", {rate / 1e9:.0f} GB/s" if rate else "") for n, t, rate in accumulate_cost()))

    print(f"\none rank's eager work with a second rank working beside it: "
          f"{co_run_slowdown(args.rounds):.2f}x its time beside a sleeping one (not written)")
    print("\n| cpu.toml field | value |\n|---|---|")
    for name, value in fields.items():
        print(f"| {name} | {value:.4g} |")
    from calibration_files import write_all, write_fields

    if args.write:
        write_all(fields, system)
    elif args.write_fields:
        write_fields({k: fields[k] for k in args.write_fields.split(",")})


if __name__ == "__main__":
    main()
