"""`dojo run`: a zoo model over local ranks, and a torchrun-style script launch."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from dojo.cli.main import main

SCRIPT = """
import os, sys, torch, torch.distributed as dist
torch.set_num_threads(1)
dist.init_process_group("gloo")
x = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(x)
assert x.item() == dist.get_world_size() * (dist.get_world_size() + 1) / 2
if dist.get_rank() == int(sys.argv[1]):
    sys.exit(3)
dist.destroy_process_group()
"""


def test_runtime_cli_runs_model(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["run", "--model", "mlp", "--plan", "dp=2,precision=fp32", "--batch", "4",
                   "--steps", "2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert status == 0 and out["ranks"] == 2 and len(out["losses"]) == 2
    assert out["step_s_simulated"] > 0


def test_runtime_cli_launches_script_and_names_failing_rank(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    assert main(["run", "--nproc", "2", str(script), "-1"]) == 0
    assert main(["run", "--nproc", "2", str(script), "1"]) == 2
    assert "rank 1" in capsys.readouterr().err


SLEEPER = """
import os, sys, time
if os.environ["RANK"] == sys.argv[1]:
    time.sleep(120)  # never reaches its collective
"""


def test_runtime_cli_script_timeout_kills_the_job_and_names_the_rank(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "sleepy.py"
    script.write_text(SLEEPER)
    start = time.monotonic()
    assert main(["run", "--nproc", "2", "--timeout", "1", str(script), "1"]) == 2
    assert time.monotonic() - start < 20
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rank 1" in err[0] and "--timeout 1 s" in err[0]


@pytest.mark.parametrize("argv, says", [
    (["--model", "mlp", "--steps", "0"], "--steps = 0"),
    (["--model", "mlp", "--steps", "-3"], "--steps = -3"),
    (["--model", "mlp", "--timeout", "0"], "--timeout = 0"),
    (["--model", "mlp", "--timeout", "-1"], "--timeout = -1"),
    (["--model", "mlp", "--timeout", "inf"], "--timeout = inf"),
    (["--model", "mlp", "--resume"], "--resume: expected --checkpoint"),
    (["--model", "mlp", "--nproc", "4"], "--nproc = 4: applies to scripts only"),
    (["--model", "gpt", "--plan", "dp=1000", "--batch", "1000"], "dp x tp x pp = 1000"),
    (["--nproc", "100000", "x.py"], "--nproc = 100000: expected 1 to"),
    (["--nproc", "0", "x.py"], "--nproc = 0"),
    (["--steps", "5", "x.py"], "--steps: applies to --model only"),
    (["--plan", "dp=2", "--nproc", "2", "x.py"], "--plan: applies to --model only"),
])
def test_runtime_cli_refuses_before_starting_anything(
        argv: list[str], says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.py").write_text("")
    assert main(["run", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dojo: error: ") and says in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.py"]


def test_runtime_cli_rank_limit_is_tied_to_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    launch = importlib.import_module("dojo.runtime.launch")  # the module, not the function
    for cores, limit in ((1, 8), (2, 8), (4, 16), (16, 64), (128, 64)):
        monkeypatch.setattr(launch.os, "cpu_count", lambda c=cores: c)
        assert launch.max_ranks() == limit


@pytest.mark.parametrize("make, resume, says", [
    (lambda d: d / "file", False, "exists and is not a folder"),
    (lambda d: Path("/proc/dojo-ckpt"), False, "is not writable"),
    (lambda d: d / "empty", True, "no manifest.json"),
])
def test_runtime_cli_checkpoint_folder_checked_first(
        make: Any, resume: bool, says: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    argv = ["run", "--model", "mlp", "--steps", "1", "--checkpoint", str(make(tmp_path))]
    assert main(argv + (["--resume"] if resume else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]


def test_runtime_cli_model_only_flags_list_the_parser_defaults() -> None:
    from dojo.cli.cmd_run import _MODEL_FLAGS
    from dojo.cli.main import build_parser

    args = build_parser().parse_args(["run", "x.py"])
    assert {k: getattr(args, k) for k in _MODEL_FLAGS} == _MODEL_FLAGS
