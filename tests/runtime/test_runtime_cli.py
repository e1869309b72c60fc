"""`dojo run`: a zoo model over local ranks, and a torchrun-style script launch."""

from __future__ import annotations

import json
from pathlib import Path

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
