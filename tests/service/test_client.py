"""The CLI's client verbs against a real server on loopback: dojo submit, jobs, usage, logs -f,
cancel, with the token from DOJO_TOKEN or the config file; and dojo admin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from dojo.cli.main import main

from .procs import Server, make_tenant


def test_admin_prints_the_token_once_and_stores_its_hash(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    assert main(["admin", "tenant", "create", "acme", "--quota-tile-hours", "5",
                 "--data", str(tmp_path)]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("dojo_")
    assert token.encode() not in (tmp_path / "dojo.db").read_bytes()
    assert main(["admin", "tenant", "create", "acme", "--quota-tile-hours", "5",
                 "--data", str(tmp_path)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["admin", "tenant", "create", "x", "--quota-tile-hours", "-1",
                 "--data", str(tmp_path)]) == 2


def test_client_verbs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    token = make_tenant(tmp_path, "acme", quota=10.0)
    config = tmp_path / "token"
    config.write_text(token + "\n")
    monkeypatch.delenv("DOJO_TOKEN", raising=False)
    monkeypatch.setenv("DOJO_CONFIG", str(config))
    # --hold queues jobs and starts none: a started simulate job can finish before the cancel
    # arrives (CI saw 'succeeded'), so the cancel must meet a queued job to be deterministic.
    with Server(tmp_path, "--hold") as server:
        s = ["--server", server.url]
        # Six tiles is the whole V1, held in the queue, then cancelled there.
        assert main(["submit", "simulate", "mlp", "--tiles", "6", "--plan", "dp=150",
                     "--batch", "150", *s]) == 0
        job = capsys.readouterr().out.strip()
        assert main(["cancel", job, *s]) == 0
        assert job in capsys.readouterr().out
        assert main(["logs", "-f", job, *s]) == 0   # returns once the job is over
        capsys.readouterr()
        assert main(["jobs", "--json", *s]) == 0
        jobs = json.loads(capsys.readouterr().out)
        assert [j["id"] for j in jobs] == [job]
        assert jobs[0]["state"] == "cancelled"
        assert main(["usage", *s]) == 0
        assert "quota 10 tile-hours" in capsys.readouterr().out
        # Server-side refusals are one line and exit 2.
        assert main(["submit", "train", "mlp", "--tiles", "7", *s]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "tiles = 7" in err[0]
        monkeypatch.setenv("DOJO_TOKEN", token[:-3] + "abc")
        assert main(["jobs", *s]) == 2
        assert "401" in capsys.readouterr().err


def test_help_imports_no_service_packages() -> None:
    # `dojo --help` builds every subparser: none may import FastAPI, SQLAlchemy or torch.
    import subprocess
    import sys

    from .procs import SRC

    code = ("import sys; from dojo.cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'fastapi', 'sqlalchemy', 'uvicorn', "
            "'dojo.service', 'httpx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout.strip() == "[]"
