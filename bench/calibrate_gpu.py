"""Calibrate the simulator's GPU cost model on the CUDA device at hand, then check it.

1. Measures BF16 GEMMs of transformer shapes (projections at several widths and token counts,
   attention score and value GEMMs), a large elementwise add (bandwidth) and a tiny kernel
   (launch cost), timed with CUDA events (median of repeats, after warm-up).
2. Fits the per-SM GEMM efficiency e_max and the epilogue overlap (`dojo.sim.fit`; the GPU
   model times GEMMs as waves of output tiles, so the half-efficiency size F_half, used only
   for matrix ops of unknown shape, is not fitted) and prints the error of the shipped
   calibration and of the fitted one.
3. Times eager training steps of a small GPT on the device and compares them with
   `dojo simulate` on one GPU of the matching system, with the shipped and fitted calibrations.
`--write` replaces src/dojo/sim/calibration/<a100|h100>.toml's measured fields.
Run: .venv/bin/python bench/calibrate_gpu.py [--write] [--quick]
`--device cpu` runs the same path on this CPU (FP32, small shapes): a smoke test of the script.
"""

from __future__ import annotations

import argparse
import functools
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from dojo.hardware.loader import load_system
from dojo.sim.costs import Calibration
from dojo.sim.fit import GemmSample, fit_gemm, mean_log_error
from dojo.sim.simulate import device_for

ROOT = Path(__file__).resolve().parent.parent
KINDS = {"A100": ("a100-cluster", "a100"), "H100": ("h100-cluster", "h100")}


def timer(device: str) -> Callable[[Callable[[], object], int], float]:
    """Median seconds of `fn` over `repeat` calls, after two warm-up calls."""
    def measure(fn: Callable[[], object], repeat: int) -> float:
        fn()
        fn()
        samples = []
        for _ in range(repeat):
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                samples.append(start.elapsed_time(end) / 1e3)
            else:
                t = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t)
        return statistics.median(samples)
    return measure


def gemm_shapes(quick: bool, cpu: bool) -> list[tuple[int, int, int, int]]:
    """(batch, m, n, k): Megatron GPT projections (QKV, out, FFN up/down) at tp 1 and 8, and
    the attention score (K = head width) and value GEMMs."""
    if cpu:
        return [(1, m, n, k) for m in (256, 1024) for n, k in ((768, 256), (256, 1024))] + [
            (8, 256, 256, 64)]
    widths = (2048, 8192) if quick else (1024, 2304, 4096, 8192, 12288)
    shapes = []
    for h in widths:
        for tp in (1, 8):
            for tokens in ((8192,) if quick else (2048, 16384)):
                shapes += [(1, tokens, 3 * h // tp, h), (1, tokens, h, h // tp),
                           (1, tokens, 4 * h // tp, h), (1, tokens, h, 4 * h // tp)]
    for heads, d in ((16, 64), (24, 96), (16, 128)):
        shapes += [(4 * heads, 2048, 2048, d), (4 * heads, 2048, d, 2048)]
    return shapes


def measure_gemms(shapes: list[tuple[int, int, int, int]], device: str, dtype: torch.dtype,
                  quick: bool) -> list[GemmSample]:
    measure = timer(device)
    out = []
    for b, m, n, k in shapes:
        a = torch.randn(b, m, k, device=device, dtype=dtype)
        w = torch.randn(b, k, n, device=device, dtype=dtype)
        seconds = measure(functools.partial(torch.bmm, a, w), 5 if quick else 20)
        out.append(GemmSample(b, m, n, k, seconds, elem_bytes=a.element_size()))
        del a, w
    return out


def bandwidth(device: str, dtype: torch.dtype, numel: int) -> float:
    """Bytes per second of a large elementwise add (two reads, one write)."""
    x = torch.randn(numel, device=device, dtype=dtype)
    y = torch.randn(numel, device=device, dtype=dtype)
    t = timer(device)(lambda: torch.add(x, y), 20)
    return 3 * numel * x.element_size() / t


def launch_cost(device: str) -> float:
    """Seconds per tiny kernel, issued back to back (launch and tail)."""
    x = torch.zeros(16, device=device)

    def chain() -> None:
        for _ in range(200):
            x.add_(1.0)

    return timer(device)(chain, 10) / 200


STEP_CASES = [  # (overrides, micro-batch): small GPTs that fit one GPU, eager, one kernel per op
    ({"layers": 4, "hidden": 2048, "heads": 16, "ffn": 8192, "vocab": 32768, "seq": 2048}, 4),
    ({"layers": 2, "hidden": 4096, "heads": 32, "ffn": 16384, "vocab": 32768, "seq": 2048}, 2),
]
CPU_STEP_CASES = [({"layers": 2, "hidden": 256, "heads": 4, "ffn": 1024, "vocab": 2048,
                    "seq": 128}, 4)]


def measured_step(overrides: dict[str, int], batch: int, device: str, dtype: torch.dtype
                  ) -> float:
    from dojo.models import build

    bundle = build("gpt", batch=batch, overrides=overrides, seed=0, device=device)
    model = bundle.model.to(dtype)
    opt = bundle.make_optimizer(model.parameters())

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        bundle.loss_fn(model(*bundle.example_inputs), *bundle.targets).backward()
        opt.step()

    return timer(device)(step, 5)


def simulated_step(overrides: dict[str, int], batch: int, system: str, precision: str,
                   cal: Calibration | None) -> float:
    """`dojo simulate` on one GPU; `cal` (a Calibration) replaces the shipped one."""
    import contextlib
    import importlib
    from unittest import mock

    from dojo.plan import parse_plan
    from dojo.sim.session import simulate_model

    sim_module = importlib.import_module("dojo.sim.simulate")
    # The simulator reads each system's calibration here; swap in the fitted one for this call.
    swap = (mock.patch.object(sim_module, "leaf_calibration", lambda spec: cal)
            if cal is not None else contextlib.nullcontext())
    with swap:
        plan = parse_plan(f"dp=1,mb={batch},precision={precision},fusion=none")
        return simulate_model("gpt", overrides, system, plan, batch, devices=1).result.step_time_s


def write(cal_name: str, fitted: Calibration, bw_eff: float, launch: float, name: str) -> None:
    """Replace the measured fields of the shipped calibration file, keeping its comments."""
    path = ROOT / "src/dojo/sim/calibration" / f"{cal_name}.toml"
    text = path.read_text(encoding="utf-8")
    values = {"matrix_efficiency": f"{fitted.matrix_efficiency:.2f}",
              "epilogue_overlap": f"{fitted.epilogue_overlap:.1f}",
              "vector_efficiency": f"{bw_eff:.2f}", "launch_s": f"{launch:.3g}"}
    for key, value in values.items():
        text = re.sub(rf"^{key} = [^\n#]*", f"{key} = {value} ", text, flags=re.M)
    day = time.strftime("%Y-%m-%d")
    text += f"# Measured fields written by bench/calibrate_gpu.py on {name}, {day}.\n"
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true", help="write the calibration file")
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = parser.parse_args()
    cpu = args.device == "cpu"
    if not cpu and not torch.cuda.is_available():
        raise SystemExit("calibrate_gpu: no CUDA device (use --device cpu for a smoke run)")
    name = torch.cuda.get_device_name(0) if not cpu else "cpu"
    kind = next((v for k, v in KINDS.items() if k in name), None)
    system, cal_name = ("cpu", "cpu") if cpu else (kind or KINDS["A100"])
    dtype, precision = (torch.float32, "fp32") if cpu else (torch.bfloat16, "bf16")
    if cpu:
        torch.set_num_threads(1)
    dev = device_for(load_system(system, devices=1), precision)
    samples = measure_gemms(gemm_shapes(args.quick, cpu), args.device, dtype, args.quick)
    bw = bandwidth(args.device, dtype, 2**20 if cpu else 2**28)
    launch = launch_cost(args.device)
    base = replace(dev, calibration=replace(dev.calibration,
                                            vector_efficiency=min(1.0, bw / dev.mem_bytes_per_s),
                                            launch_s=launch))
    fitted, err = fit_gemm(samples, base)
    fitted_dev = replace(dev, calibration=fitted)
    print(f"device: {name} (modelled as {system}, calibration {cal_name})")
    print(f"bandwidth {bw / 1e9:.0f} GB/s = {bw / dev.mem_bytes_per_s:.2f} of "
          f"{dev.mem_bytes_per_s / 1e9:.0f}; launch {launch * 1e6:.1f} us")
    print("\n| batch x m x n x k | measured ms | TFLOP/s | shipped model | fitted model |")
    print("|---|---|---|---|---|")
    for s in samples:
        flops = s.cost()[0]
        print(f"| {s.batch}x{s.m}x{s.n}x{s.k} | {s.seconds * 1e3:.3f} | "
              f"{flops / s.seconds / 1e12:.1f} | {s.predicted(dev) / s.seconds - 1:+.1%} | "
              f"{s.predicted(fitted_dev) / s.seconds - 1:+.1%} |")
    print(f"\nmean |log error|: shipped {mean_log_error(samples, dev):.3f}, fitted {err:.3f} "
          f"(e_max {fitted.matrix_efficiency:.2f}, F_half {fitted.matrix_half_flops:.3g}"
          f"{'' if cpu else ' kept'}, epilogue_overlap {fitted.epilogue_overlap:.1f})")
    print("\n| GPT step | measured s | shipped | fitted |\n|---|---|---|---|")
    for overrides, batch in CPU_STEP_CASES if cpu else STEP_CASES:
        real = measured_step(overrides, batch, args.device, dtype)
        shipped = simulated_step(overrides, batch, system, precision, None)
        mine = simulated_step(overrides, batch, system, precision, fitted)
        print(f"| {overrides['layers']}x{overrides['hidden']} mb {batch} | {real:.4f} | "
              f"{shipped / real - 1:+.1%} | {mine / real - 1:+.1%} |")
    if args.write and not cpu:
        write(cal_name, fitted, bw / dev.mem_bytes_per_s, launch, name)


if __name__ == "__main__":
    main()
