"""A calibration of this machine measured now, as a system file the simulator loads
(bench/bench_cpu_loop.py --recalibrate): the machine's state drifts between invocations minutes
apart (docs/benchmarks.md), so a row simulated with a calibration measured just before it
shares the machine's state with its measurement, side by side.

"fast" re-measures the dispatch and host figures (`calibrate_cpu.fast_fields`: the eager
stacks, per-call convolution work, optimizer and sync host time, the multi-rank host costs;
~20-30 s) and keeps the committed rates; "all" re-measures the rates too (GEMM peak, memory and
cache, vector kernels, gloo; ~20 s more). Nothing is written to the committed files: the
measurement goes to a temporary system file with the committed system's rates (or the new
ones) and a `[gpu.calibration]` table of every measured field.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDER = Path(tempfile.mkdtemp(prefix="dojo-fresh-cal-"))


def fresh_system(mode: str, rounds: int, name: str) -> tuple[str, dict[str, float]]:
    """(path of a system file describing this machine as measured now, its calibration
    fields) for `mode` "fast" or "all"; `name` names the file (one per model's rows)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from calibrate_cpu import fast_fields, throughput_fields
    from calibration_files import system_text

    text = (ROOT / "src/dojo/hardware/systems/cpu.toml").read_text(encoding="utf-8")
    if mode == "all":
        rates, system, _ = throughput_fields(rounds)
        fields, _ = fast_fields(rounds, (rates["collective_latency_s"], system["link"]))
        fields = {**rates, **fields}
        text = system_text(system)
    else:
        fields, _ = fast_fields(rounds)
    return write_system(text, fields, FOLDER / f"cpu-{name}.toml"), fields


def write_system(text: str, fields: dict[str, float], path: Path) -> str:
    """Write the system file `text` with `fields` as its `[gpu.calibration]` overrides (the
    simulator applies them over the shipped cpu calibration) to `path`; returns the path."""
    path.write_text(text + "\n[gpu.calibration]\n"
                    + "".join(f"{k} = {v:.6g}\n" for k, v in fields.items()), encoding="utf-8")
    return str(path)


def simulated_with(system: str, model: str, plan: str) -> float:
    """Simulated step seconds of `model`'s small preset under `plan` (FP32) on `system`."""
    from dojo.runtime import Job
    from dojo.runtime.job import simulate_job

    job = Job(model=model, plan=f"{plan},precision=fp32", system=system)
    return float(simulate_job(job).result.step_time_s)
