"""`dojo train` killed with SIGTERM mid-training: exit 143 with one line, and OUT holds only
whole files (the clip catalog it indexed before training, the last complete checkpoint), no
temporaries. A real subprocess and a real signal;
slow because the subprocess first simulates the large preset (~20-30 s on 2 cores)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dojo.train.checkpoint as checkpoint


@pytest.mark.slow
def test_sigterm_mid_training_leaves_whole_files(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "dojo.cli.main", "train", "occupancy", "--data", str(tiny_data),
            "--out", str(out), "--steps", "100000", "--batch", "2"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen, deadline = "", time.monotonic() + 300
    while "train [" not in seen and time.monotonic() < deadline and proc.poll() is None:
        seen += proc.stderr.read(1)
    assert "train [" in seen, seen  # text pipes read "\r" as "\n"
    time.sleep(2.0)  # some steps and a checkpoint (every 50 steps) or two
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 143, rest
    last = [x for x in rest.replace("\r", "\n").splitlines() if x.startswith("dojo")]
    assert last == ["dojo: train: terminated (SIGTERM); temporary files removed"], rest
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert all(not Path(p).name.startswith(".") for p in left), left
    kept = {p for p in left if p != "catalog" and not p.startswith("catalog/")}
    assert kept <= {"checkpoint", "checkpoint/state.pt"}, left
    if (out / "catalog").exists():  # written before training: whole tables that read back
        from dojo.data.catalog import read_tables

        assert all(len(t) > 0 for t in read_tables(str(out / "catalog")).values())
    if (out / "checkpoint" / "state.pt").exists():  # a whole checkpoint that loads
        checkpoint.load(out / "checkpoint", {})
