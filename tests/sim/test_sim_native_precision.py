"""A plan that names no precision runs at the system's own: bf16 where the device has a BF16
rate, fp32 on the `cpu` system (one core has no BF16 arithmetic), said in a note. Issue 14
item 4's own command (`dojo run ... --plan dp=1 --system cpu`) was refused for bf16."""

from __future__ import annotations

import json

import pytest

from dojo.cli.main import main
from dojo.hardware import load_system
from dojo.sim.simulate import default_precision

SETS = ["--set", "layers=2", "--set", "hidden=64", "--set", "heads=4", "--set", "ffn=256",
        "--set", "vocab=512", "--set", "seq=32"]


@pytest.mark.parametrize(("system", "precision"), [
    ("cpu", "fp32"), ("h100-cluster", "bf16"), ("a100-cluster", "bf16"), ("v1", "bf16")])
def test_default_precision_follows_the_devices_rates(system: str, precision: str) -> None:
    """bf16 exactly where the leaf's peak table has a BF16 rate (the system files)."""
    spec = load_system(system)
    assert ("bf16" in spec.leaf.peak_flops) == (precision == "bf16")
    assert default_precision(spec) == precision


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:  # type: ignore[type-arg]
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_simulate_on_cpu_without_precision_runs_fp32_and_says_so(
        capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(capsys, "simulate", "gpt", *SETS, "--system", "cpu", "--plan", "dp=1,mb=1",
                "--batch", "2", "--json")
    assert "precision=fp32" in out["plan"]
    assert out["notes"] == ["--plan gives no precision and cpu has no bf16 rate, so "
                            "precision=fp32"]
    same = _json(capsys, "simulate", "gpt", *SETS, "--system", "cpu", "--plan",
                 "dp=1,mb=1,precision=fp32", "--batch", "2", "--json")
    assert same["step_time_s"] == out["step_time_s"] and same["notes"] == []


def test_an_explicit_precision_the_device_lacks_is_still_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", "gpt", *SETS, "--system", "cpu", "--plan", "dp=1,precision=bf16",
                 "--batch", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "no peak rate for precision 'bf16'" in err and err.count("\n") == 1


def test_gpus_keep_bf16_and_no_note(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(capsys, "simulate", "gpt", *SETS, "--system", "h100-cluster:1", "--plan",
                "dp=1,mb=1", "--batch", "2", "--json")
    assert "precision=bf16" in out["plan"] and out["notes"] == []


def test_plan_and_sweep_on_cpu_search_fp32(capsys: pytest.CaptureFixture[str]) -> None:
    found = _json(capsys, "plan", "gpt", *SETS, "--system", "cpu", "--batch", "2", "--json")
    assert "precision=fp32" in found["best"]["plan"]
    sweep = _json(capsys, "sweep", "gpt", *SETS, "--system", "cpu", "--devices", "1,2",
                  "--batch", "2", "--json")
    assert all("precision=fp32" in p["plan"] for p in sweep["points"])


def test_run_on_cpu_without_precision_trains_fp32(capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's command shape: `--plan dp=1 --system cpu` trains, in FP32, and says so."""
    out = _json(capsys, "run", "--model", "gpt", *SETS, "--plan", "dp=1", "--system", "cpu",
                "--batch", "2", "--steps", "2", "--json")
    assert "precision=fp32" in out["plan"] and len(out["losses"]) == 2
    assert out["notes"] == ["--plan gives no precision and cpu has no bf16 rate, so "
                            "precision=fp32"]
