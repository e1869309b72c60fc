"""The `cpu` device's files from bench/calibrate_cpu.py's measurements: the simulator's
calibration (`sim/calibration/cpu.toml`) and the system (`hardware/systems/cpu.toml`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
THREADS = 1  # what each `dojo run` rank uses (dojo.runtime.launch)


CAL = ROOT / "src/dojo/sim/calibration/cpu.toml"


def write_fields(values: dict[str, float]) -> None:
    """Replace (or append) only `values`' lines of the committed cpu.toml: new fields measured
    now, the rest of the calibration kept as it was measured."""
    lines = CAL.read_text(encoding="utf-8").splitlines()
    stamp = (f"# {', '.join(values)}: measured {time.strftime('%Y-%m-%d %H:%M', time.gmtime())}"
             f" UTC at load average {os.getloadavg()[0]:.1f} (bench/calibrate_cpu.py"
             " --write-fields)")
    lines = [ln for ln in lines if not ln.startswith(f"# {', '.join(values)}: measured")]
    lines.insert(2, stamp)
    for name, value in values.items():
        new = f"{name} = {value:.4g}"
        at = [i for i, ln in enumerate(lines) if ln.split(" = ")[0] == name]
        if at:
            lines[at[0]] = new
        else:
            lines.insert(len(lines) - 1, new)  # before `source`
    CAL.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {', '.join(values)} into {CAL.relative_to(ROOT)}")


def calibration_text(fields: dict[str, float]) -> str:
    """The text of `sim/calibration/cpu.toml` for measured `fields`."""
    order = ["matrix_half_flops", "launch_s", "collective_latency_s", "conv_efficiency",
             "cache_bytes", "cache_bytes_per_s"]
    rest = [k for k in fields if k not in order]
    return (f"# Measured by bench/calibrate_cpu.py on the development machine ({THREADS} thread,"
            f" FP32, eager),\n# {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC at load "
            f"average {os.getloadavg()[0]:.1f}; re-run it before comparing (machines differ "
            "between sessions).\n"
            'name = "cpu"\nmatrix_efficiency = 1.0\nvector_efficiency = 1.0\n'
            "link_efficiency = 1.0\nidle_fraction = 0.3\neager = true\n"
            + "".join(f"{k} = {fields[k]:.4g}\n" for k in order + rest)
            + 'source = "bench/calibrate_cpu.py"\n')


def system_text(system: dict[str, float]) -> str:
    """The text of `hardware/systems/cpu.toml` for measured `system` rates (peak FLOP/s,
    memory and gloo bytes/s)."""
    peak, memory, link = system["peak"], system["memory"], system["link"]
    return (
        "# One core of the development machine as a device, measured by bench/calibrate_cpu.py:\n"
        "# peak = best FP32 GEMM rate, bandwidth = elementwise add beyond the caches, links =\n"
        "# gloo all-reduce between two local processes. FP32 only: the CPU has no BF16/FP16\n"
        "# arithmetic (dojo's runtime would emulate their rounding, which no device model\n"
        "# times). For checking the simulator against real eager steps; not a training system.\n"
        'name = "cpu"\ntitle = "one CPU core (measured)"\nfamily = "gpu"\n'
        'source = "bench/calibrate_cpu.py"\nhierarchy = ["gpu", "server", "cluster"]\n\n'
        f'[gpu]\ncost_model = "cpu"\npower_watts = 15.0\n\n[gpu.peak_flops]\nfp32 = {peak:.4g}\n'
        f"\n[gpu.memory.hbm]\nbytes = 24.0e9\nread_bytes_per_s = {memory:.4g}\n"
        f"write_bytes_per_s = {memory:.4g}\n\n[server]\ncount = 1\ntopology = \"switch\"\n\n"
        f'[server.link]\nname = "loopback"\nbytes_per_s = {link:.4g}\n\n[cluster]\ncount = 1\n'
        f'topology = "fat_tree"\n\n[cluster.link]\nname = "loopback"\nbytes_per_s = {link:.4g}\n')


def write_all(fields: dict[str, float], system: dict[str, float]) -> None:
    """Write both files from a whole calibration's `fields` and `system` rates."""
    CAL.write_text(calibration_text(fields), encoding="utf-8")
    path = ROOT / "src/dojo/hardware/systems/cpu.toml"
    path.write_text(system_text(system), encoding="utf-8")
    print(f"wrote {CAL.relative_to(ROOT)} and {path.relative_to(ROOT)}")
