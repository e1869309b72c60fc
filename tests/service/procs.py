"""Real server processes for the service tests: start on a free loopback port, stop, kill -9."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[2] / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`dojo serve` in a subprocess on 127.0.0.1; `url`, `stop()`, `kill9()`."""

    def __init__(self, data: Path, *extra: str, port: int | None = None) -> None:
        self.data, self.extra = data, extra
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> Server:
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        log = open(self.data / f"server-{time.time():.0f}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dojo.cli.main", "serve", "--data", str(self.data),
             "--port", str(self.port), *self.extra], stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.2)
        self.kill9()
        raise RuntimeError("server did not start")

    def stop(self, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.kill9()


def make_tenant(data: Path, name: str, quota: float = 1000.0, role: str = "admin") -> str:
    from dojo.service.auth import new_token
    from dojo.service.server import open_store

    store = open_store(data, None)
    tid, token, digest = new_token()
    store.create_tenant(name, quota, tid, role, digest)
    store.close()
    return token


def wait_for(check: Any, timeout_s: float, poll_s: float = 0.5, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
