"""The simulated half: utilisation maps against the simulator's own breakdown and the hardware
figures, and the `dojo train` command end to end on tiny data."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from dojo.cli.main import main
from dojo.data.decodecal import CALIBRATION
from dojo.hardware.loader import dip_count
from dojo.train import TrainResult


def test_tile_map_matches_the_step_breakdown(tiny_run: TrainResult) -> None:
    sim = tiny_run.sim
    plan, r = sim.dojo.program.plan, sim.dojo.result
    assert plan.pp == 1  # occupancy has one block: every chip runs the only stage
    u = sim.utilisation
    assert (len(u.tiles), len(u.tiles[0])) == (6, 25)  # V1: 6 tiles of 25 D1 chips
    busy = r.breakdown_s["compute"] + r.breakdown_s["recompute"] + r.breakdown_s["optimizer"]
    for row in u.tiles:
        assert row == pytest.approx([busy / r.step_time_s] * 25, rel=1e-9)


def test_input_link_use_from_the_hardware_figures(tiny_run: TrainResult) -> None:
    sim = tiny_run.sim
    spec, r = sim.dojo.program.system, sim.dojo.result
    u = sim.utilisation
    assert spec.dip is not None
    link = min(spec.dip.pcie.bytes_per_s, spec.dip.ttp.bytes_per_s) * dip_count(spec)
    expected = sim.dojo.program.batch * 64 * 1280 * 960 * 3 / link / r.step_time_s
    row = u.traffic_labels.index("input data")
    assert u.links[row][-1] == pytest.approx(min(1.0, expected), rel=1e-9)
    assert all(0.0 <= v <= 1.0 for line in u.links for v in line)


def test_hosts_needed_from_the_recorded_rate_at_1280x960(tiny_run: TrainResult) -> None:
    sim = tiny_run.sim
    compute = sim.dojo_compute.result.step_time_s
    frames = sim.dojo.program.batch * 64  # 8 cameras x 8 frames per sample
    host = sim.dojo.program.system.host
    assert host is not None
    cores = host.cpu_cores
    assert sim.data.hosts_needed == -(-frames / compute // (cores * sim.decode_fps_large))
    # The rate is the shipped calibration's probe point at 1280 x 960, read here from the file
    # itself, not a live measurement.
    recorded = tomllib.loads(CALIBRATION.read_text())
    probe = {(p["width"], p["height"]): p["frames_per_s"] for p in recorded["probe"]}
    assert sim.decode_fps_large == probe[(1280, 960)]
    data_fps, large_fps = tiny_run.decode
    assert large_fps.source == data_fps.source == "recorded"
    rendered = {(p["width"], p["height"]): p["frames_per_s"] for p in recorded["rendered"]}
    assert data_fps.size == (32, 32) and data_fps.frames_per_s == rendered[(32, 32)]


def test_command_line_run_prints_metrics(tiny_data: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["train", "occupancy", "--data", str(tiny_data), "--out", str(out), "--steps", "2",
            "--batch", "2", "--precision", "cfp8", "--plan", "dp=150", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    m = json.loads(captured.out)
    assert m["steps"] == 2 and m["simulated"]["plan"].startswith("dp=150")
    assert "precision=cfp8" in m["simulated"]["plan"]
    assert "\rtrain [" in captured.err and "2/2" in captured.err
    assert (out / "report.html").is_file() and (out / "checkpoint" / "state.pt").is_file()
    # H100s have no CFP8: the GPU side runs, and is labelled, BF16 (issue 14 item 10).
    html = (out / "report.html").read_text()
    gpu_section = html.split("same power")[1].split("metrics.json")[0]
    gpu_row = gpu_section[gpu_section.index("GPU: h100-cluster"):]
    assert "<td>bf16</td>" in gpu_row.split("</tr>")[0]
    assert "The GPUs run bf16" in gpu_section


def test_gpu_runs_the_precision_it_has() -> None:
    """The H100 file lists no CFP8 matrix rate (read here from the file; its FP8 rate is for
    precision=fp8, TransformerEngine's recipe, not Dojo's CFP8), so a CFP8 run is compared with
    BF16 GPUs, and FP32 and BF16 runs with GPUs at the same."""
    from dojo.hardware.loader import load_system
    from dojo.train.simulated import gpu_precision

    h100 = load_system("h100-cluster", devices=8)
    import dojo.hardware

    systems = Path(dojo.hardware.__file__).parent / "systems"
    toml = tomllib.loads((systems / "h100-cluster.toml").read_text())
    assert {"fp32", "bf16"} <= set(toml["gpu"]["peak_flops"])
    assert "cfp8" not in toml["gpu"]["peak_flops"]
    assert [gpu_precision(p, h100) for p in ("fp32", "bf16", "cfp8")] == ["fp32", "bf16", "bf16"]
    assert gpu_precision("cfp8", load_system("v1")) == "cfp8"  # D1 has CFP8 itself
