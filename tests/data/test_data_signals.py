"""`dojo data synth` stopped or pointed at a bad folder: one line, exit status, nothing left
behind. SIGTERM is sent to a real subprocess (issue 14 item 8: it used to leave `.NAME.tmp-PID`
folders, while Ctrl-C was clean)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dojo.cli.main import main


def _start_synth(out: Path) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "dojo.cli.main", "data", "synth", "--out", str(out),
            "--clips", "200", "--cameras", "1", "--frames", "2", "--size", "32x32"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_synthesis_leaves_nothing(sig: signal.Signals, status: int,
                                             tmp_path: Path) -> None:
    out = tmp_path / "set"
    proc = _start_synth(out)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # "dojo data synth: 1/200 clips": the temp folder exists now
    assert "1/200" in line, line
    assert any(p.name.startswith(".set.tmp-") for p in tmp_path.iterdir())
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    lines = [x for x in err.splitlines() if "clips" not in x or "dojo:" in x]
    assert proc.returncode == status, err
    assert len(lines) == 1 and lines[0].startswith("dojo:") and "Traceback" not in err
    assert os.listdir(tmp_path) == []  # no set, no .set.tmp-PID


def test_existing_file_as_out_is_one_line(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep")
    assert main(["data", "synth", "--out", str(afile), "--clips", "1", "--force"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(afile) in err and "is a file" in err
    assert afile.read_text() == "keep" and os.listdir(tmp_path) == ["afile"]


def test_out_under_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep")
    assert main(["data", "synth", "--out", str(afile / "set"), "--clips", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(afile / "set") in err and "Traceback" not in err
    assert os.listdir(tmp_path) == ["afile"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        assert main(["data", "synth", "--out", str(locked / "set"), "--clips", "1"]) == 2
    finally:
        locked.chmod(0o755)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(locked / "set") in err
    assert os.listdir(locked) == []


def test_sigterm_outside_a_command_keeps_the_default(tmp_path: Path) -> None:
    """The handler is installed only while the command runs, and restored after."""
    before = signal.getsignal(signal.SIGTERM)
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--clips", "1", "--cameras",
                 "1", "--frames", "1", "--size", "16x16"]) == 0
    assert signal.getsignal(signal.SIGTERM) == before
