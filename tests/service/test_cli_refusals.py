"""Refusals of `dojo serve`, `dojo admin` and the client verbs that the fuzz table cannot draw:
a port another process holds, a password in --db, no token at all. Each is one line on stderr,
exit 2, nothing written (the data folder a failed start made is removed) and nothing listening.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dojo.cli.main import main


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dojo: error: "), err
    return lines[0]


def test_serve_refuses_a_busy_port_before_writing(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "dojo.cli.main", "serve", "--port",
                               str(port), "--data", "svc"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "--port" in _one_line(done.stderr) and str(port) in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [
    ("admin", "tenant", "create", "acme", "--quota-tile-hours", "5"),
    ("worker",),
])
def test_db_password_never_printed_and_data_folder_removed(
        argv: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    status = main([*argv, "--data", "a/b/svc", "--db",
                   "postgresql://fuzz:s3cr3t@nohost.invalid/x"])
    line = _one_line(capsys.readouterr().err)
    assert status == 2
    assert "--db" in line and "s3cr3t" not in line and "nohost.invalid" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("verb", [("jobs",), ("usage",), ("logs", "j1"), ("cancel", "j1"),
                                  ("submit", "plan", "mlp")])
def test_client_without_token(verb: tuple[str, ...], tmp_path: Path,
                              capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOJO_TOKEN", raising=False)
    monkeypatch.setenv("DOJO_CONFIG", str(tmp_path / "none" / "token"))
    status = main([*verb, "--server", "http://127.0.0.1:9"])
    assert status == 2
    assert "no token" in _one_line(capsys.readouterr().err)
