"""A server that accepts the connection and never answers: the client gives up after its
`--timeout-s` (or $DOJO_TIMEOUT_S) with one line, exit 2, instead of hanging 30 s."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from dojo.cli.main import main


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A loopback port whose kernel completes the handshake (listen backlog) and nobody reads."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("how", ["flag", "env"])
@pytest.mark.parametrize("verb", [("jobs",), ("usage",), ("cancel", "j-1"), ("logs", "j-1"),
                                  ("submit", "simulate", "mlp")])
def test_silent_server_times_out(verb: tuple[str, ...], how: str, silent_server: str,
                                 capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOJO_TOKEN", "t0k3n")
    argv = [*verb, "--server", silent_server]
    if how == "flag":
        argv += ["--timeout-s", "0.2"]
    else:
        monkeypatch.setenv("DOJO_TIMEOUT_S", "0.2")
    start = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - start < 10  # 0.2 s asked; 30 s before the option
    err = capsys.readouterr().err
    assert err.startswith("dojo: error: ") and err.count("\n") == 1, err
    assert "no answer within 0.2 s" in err, err


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e999", "soon", "86401"])
def test_bad_timeout_is_one_line(value: str, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOJO_TOKEN", "t0k3n")
    assert main(["jobs", "--server", "http://127.0.0.1:9", "--timeout-s", value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--timeout-s" in err and "timeout_s" in err, err
    assert f"= {value}" in err or repr(value) in err, err
