"""Calibrate the simulator's cost model on this CPU (one thread), then check it on real steps.

1. Measures FP32 GEMM throughput over sizes (the best large-GEMM rate is taken as the device's
   peak; the half-efficiency FLOPs are fitted to the small sizes), elementwise bandwidth, and
   per-op overhead of eager PyTorch; writes src/dojo/sim/calibration/cpu.toml and
   src/dojo/hardware/systems/cpu.toml (with --write).
2. Times real eager training steps of small zoo models and compares them with `dojo simulate`
   on the `cpu` system: the error is the cost model's, measured on hardware at hand.
Run: .venv/bin/python bench/calibrate_cpu.py [--write]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _best(fn, repeat: int = 5) -> float:  # type: ignore[no-untyped-def]
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return min(samples)


def gemm_curve() -> list[tuple[float, float]]:
    """(FLOP, FLOP/s) of square FP32 GEMMs."""
    out = []
    for n in (32, 64, 128, 256, 512, 1024, 1536):
        a, b = torch.randn(n, n), torch.randn(n, n)
        t = _best(lambda a=a, b=b: torch.mm(a, b))
        out.append((2.0 * n**3, 2.0 * n**3 / t))
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


def conv_ratio(peak: float) -> float:
    """FP32 3x3 convolution throughput (forward) as a fraction of the GEMM peak."""
    rates = []
    for c, hw in ((64, 32), (128, 16), (256, 8)):
        x = torch.randn(8, c, hw, hw)
        w = torch.randn(c, c, 3, 3)
        t = _best(lambda x=x, w=w: torch.nn.functional.conv2d(x, w, padding=1))
        rates.append(2.0 * 8 * c * c * 9 * hw * hw / t)
    return min(1.0, statistics.median(rates) / peak)


def bandwidth() -> float:
    x, y = torch.randn(8_000_000), torch.randn(8_000_000)
    t = _best(lambda: torch.add(x, y))
    return 3 * 4 * 8_000_000 / t  # two reads and a write of FP32


def launch_overhead() -> float:
    """Seconds per op of eager autograd on tiny tensors: forward op plus its backward node."""
    x = torch.randn(8, requires_grad=True)

    def chain() -> None:
        y = x
        for _ in range(200):
            y = y * 1.0001
        y.sum().backward()

    return _best(chain) / 400


def measured_step(name: str, overrides: dict, batch: int) -> float:  # type: ignore[type-arg]
    from dojo.models import build

    bundle = build(name, batch=batch, overrides=overrides, seed=0)
    opt = bundle.make_optimizer(bundle.model.parameters())

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        bundle.loss_fn(bundle.model(*bundle.example_inputs), *bundle.targets).backward()
        opt.step()

    for _ in range(2):
        step()
    return statistics.median(_best(step, 1) for _ in range(5))


CASES = [
    ("mlp", {}, 64),
    ("gpt", {"layers": 4, "hidden": 256, "heads": 4, "ffn": 1024, "vocab": 2048, "seq": 128}, 4),
    ("gpt", {"layers": 2, "hidden": 512, "heads": 8, "ffn": 2048, "vocab": 4096, "seq": 256}, 2),
    ("resnet18", {"image": 64}, 8),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true", help="write the calibration files")
    args = parser.parse_args()
    torch.set_num_threads(1)
    curve = gemm_curve()
    peak = max(rate for _, rate in curve)
    half = fit_half(curve, peak)
    bw = bandwidth()
    launch = launch_overhead()
    conv = conv_ratio(peak)
    print(f"machine: {platform.processor() or platform.machine()}, 1 thread")
    print("| GEMM FLOP | GFLOP/s |\n|---|---|")
    for f, rate in curve:
        print(f"| {f:.3g} | {rate / 1e9:.1f} |")
    print(f"\npeak {peak / 1e9:.1f} GFLOP/s, half-efficiency at {half:.3g} FLOP, "
          f"bandwidth {bw / 1e9:.2f} GB/s, per-op overhead {launch * 1e6:.1f} us, "
          f"conv at {conv:.2f} of the GEMM rate")
    if args.write:
        _write(peak, half, bw, launch, conv)
    _validate()


def _write(peak: float, half: float, bw: float, launch: float, conv: float) -> None:
    cal = ROOT / "src/dojo/sim/calibration/cpu.toml"
    cal.write_text(
        "# Measured by bench/calibrate_cpu.py on the development machine (1 thread, FP32).\n"
        'name = "cpu"\nmatrix_efficiency = 1.0\n'
        f"matrix_half_flops = {half:.4g}\nvector_efficiency = 1.0\nlaunch_s = {launch:.4g}\n"
        "link_efficiency = 1.0\ncollective_latency_s = 0.0\nidle_fraction = 0.3\n"
        f"conv_efficiency = {conv:.3g}\n"
        'source = "bench/calibrate_cpu.py"\n', encoding="utf-8")
    system = ROOT / "src/dojo/hardware/systems/cpu.toml"
    system.write_text(
        "# One core of the development machine as a device, measured by bench/calibrate_cpu.py:\n"
        "# peak = best FP32 GEMM rate, bandwidth = large elementwise add. For validating the\n"
        "# simulator against real eager steps; not a training system.\n"
        'name = "cpu"\ntitle = "one CPU core (measured)"\nfamily = "gpu"\n'
        'source = "bench/calibrate_cpu.py"\nhierarchy = ["gpu", "server", "cluster"]\n\n'
        f'[gpu]\ncost_model = "cpu"\npower_watts = 15.0\n\n[gpu.peak_flops]\nfp32 = {peak:.4g}\n'
        f"bf16 = {peak:.4g}\n\n[gpu.memory.hbm]\nbytes = 24.0e9\nread_bytes_per_s = {bw:.4g}\n"
        f"write_bytes_per_s = {bw:.4g}\n\n[server]\ncount = 1\ntopology = \"switch\"\n\n"
        '[server.link]\nname = "shm"\nbytes_per_s = 5.0e9\n\n[cluster]\ncount = 1\n'
        'topology = "fat_tree"\n\n[cluster.link]\nname = "loopback"\nbytes_per_s = 1.0e9\n',
        encoding="utf-8")
    print(f"wrote {cal.relative_to(ROOT)} and {system.relative_to(ROOT)}")


def _validate() -> None:
    from dojo.plan import parse_plan
    from dojo.sim.session import simulate_model

    print("\n| model | batch | measured s | simulated s | error |\n|---|---|---|---|---|")
    for name, overrides, batch in CASES:
        real = measured_step(name, overrides, batch)
        plan = parse_plan(f"dp=1,mb={batch},precision=fp32,fusion=none")
        sim = simulate_model(name, overrides, "cpu", plan, batch)
        pred = sim.result.step_time_s
        label = name + (f" {overrides.get('layers')}x{overrides.get('hidden')}"
                        if name == "gpt" else "")
        print(f"| {label} | {batch} | {real:.4f} | {pred:.4f} | {(pred - real) / real:+.1%} |")


if __name__ == "__main__":
    main()
