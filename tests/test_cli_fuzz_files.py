"""Bad files and odd text under the contract of `test_cli_fuzz.py` (one error line, exit 2, no
traceback, nothing written), found by hand-fuzzing the CLI beyond the random slots: names with
control characters, digits `int` refuses ("²"), TOML and JSON nested past the parser's
recursion, files that cannot be read, float fields at the ends of the double range, a
micro-batch traced before it was checked, runs.csv cells past the csv module's limit, and clip
catalogs of another layout. Each case is also one line of `docs/benchmarks.md`'s fuzz log.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cli_fuzz_verbs import set_up
from dojo.cli.main import main
from test_cli_fuzz import _snapshot, check_refusal, run_inprocess

H100 = 'extends = "h100-cluster"\nname = "s"\ntitle = "s"\n'
DEEP = "a = " + "[" * 5000 + "]" * 5000 + "\n"  # past tomllib's and json's recursion
RUNS = "model,plan,batch,seconds\n"


def _parquet(columns: dict[str, list[object]]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def _files(files: dict[str, str | bytes | Callable[[], bytes]]) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        for rel, data in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            data = data() if callable(data) else data
            if isinstance(data, bytes):
                path.write_bytes(data)
            else:
                path.write_text(data, encoding="utf-8")
    return setup


def _clips(files: dict[str, str | bytes | Callable[[], bytes]]) -> Callable[[Path], None]:
    """The 1-clip set of `cli_fuzz_verbs` at ./clips with `files` written over it."""
    def setup(root: Path) -> None:
        set_up("clips", root)
        _files({f"clips/{k}": v for k, v in files.items()})(root)
    return setup


NONE: Callable[[Path], None] = _files({})
# (argv, files to put in the case folder first)
CASES: list[tuple[tuple[str, ...], Callable[[Path], None]]] = [
    # a line break, NUL or escape in a typed name printed as is split the error line
    (("info", "h100-cluster\n"), NONE),
    (("info", "h100-cluster\x00"), NONE),
    (("simulate", "mlp\x1b[2J", "--system", "v1"), NONE),
    # str.isdigit is true for "²", int("²") is a ValueError
    (("info", "h100-cluster:²"), NONE),
    (("calibrate", "--system", "h100-cluster", "--runs", "r.csv", "--out", "m.toml"),
     _files({"r.csv": RUNS + "mlp,dp=8,²,0.01\n"})),
    # nesting past the parser's recursion: RecursionError
    (("info", "deep.toml"), _files({"deep.toml": DEEP})),
    (("data", "query", "SELECT 1", "--catalog", "clips/catalog", "--slices", "s.toml"),
     _clips({"../s.toml": DEEP})),
    (("data", "check", "clips"), _clips({"manifest.json": "[" * 100000 + "]" * 100000})),
    # the double range's ends: Infinity and NaN in the JSON of info and simulate
    (("info", "s.toml", "--json"),
     _files({"s.toml": H100 + "[server.link]\nbytes_per_s = 1e308\n"})),
    (("info", "s.toml", "--json"), _files({"s.toml": H100 + "[gpu.peak_flops]\nbf16 = 1e-320\n"})),
    (("info", "s.toml"), _files({"s.toml": H100 + "[gpu]\npower_watts = 1" + "0" * 400 + "\n"})),
    (("calibrate", "--system", "h100-cluster", "--runs", "r.csv", "--out", "m.toml"),
     _files({"r.csv": RUNS + "mlp,dp=8,8,1e-320\n"})),
    # a 5,000-digit count became inf before the message quoted it
    (("simulate", "mlp", "--system", "h100-cluster:8", "--plan", "dp=" + "9" * 5000), NONE),
    # the micro-batch was traced (10^12 samples) before the plan was checked against the batch
    (("simulate", "gpt", "--system", "h100-cluster:8", "--plan", "dp=8,mb=1000000000000",
      "--batch", "8"), NONE),
    # a cell past the csv module's 131,072-character limit
    (("calibrate", "--system", "h100-cluster", "--runs", "r.csv", "--out", "m.toml"),
     _files({"r.csv": RUNS + "mlp,dp=8,8," + "1" * 200_000 + "\n"})),
    # catalogs of another layout: a view or a merge over them was a traceback
    (("data", "query", "SELECT count(*) FROM clips", "--catalog", "clips/catalog"),
     _clips({"catalog/clips.parquet": lambda: _parquet({"x": [1]})})),
    (("data", "query", "SELECT count(*) FROM clips", "--catalog", "clips/catalog"),
     _clips({"catalog/frames.parquet": b"PAR1 not parquet"})),
    (("data", "index", "clips", "--catalog", "clips/catalog"),
     _clips({"catalog/splits.parquet": lambda: _parquet({"clip_hash": [1], "split": ["a"]})})),
]
if Path("/proc/self/mem").is_file():  # a regular file whose read is an I/O error
    CASES += [(("info", "/proc/self/mem"), NONE),
              (("calibrate", "--system", "h100-cluster", "--runs", "/proc/self/mem", "--out",
                "m.toml"), NONE)]


@pytest.mark.parametrize(("argv", "setup"), [
    pytest.param(argv, setup, id="_".join(argv)[:70].encode("unicode_escape").decode())
    for argv, setup in CASES])
def test_bad_files_are_refused_in_one_line(argv: tuple[str, ...], setup: Callable[[Path], None],
                                           tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    setup(tmp_path)
    before = _snapshot(tmp_path)
    status, err, seconds = run_inprocess(argv, tmp_path, capsys)
    check_refusal(status, err, seconds, before, _snapshot(tmp_path))


CAL = ("calibrate", "--system", "h100-cluster", "--runs", "r.csv", "--out")


@pytest.mark.parametrize(("argv", "words"), [
    ((*CAL, "m.toml/"), "--out m.toml/: ends with '/': expected a file path, not a folder"),
    ((*CAL, "/dev/full"), "--out /dev/full: is a device or special file"),
    ((*CAL, "m"), "--out m: no extension: expected one of .toml"),
    (("simulate", "mlp", "--system", "/dev/null"), "/dev/null: is a device or special file: "
     "expected a system .toml file"),
    (("info", "/dev/null"), "/dev/null: is a device or special file"),
])
def test_paths_are_named_for_what_they_are(argv: tuple[str, ...], words: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """'m.toml/' was taken as m.toml, /dev/full had "extension '.'", a device given as a system
    was an "unknown system"."""
    if argv[-1].startswith("/dev/") and not Path(argv[-1]).exists():
        pytest.skip(f"no {argv[-1]} here")
    _files({"r.csv": RUNS + "mlp,dp=8,8,0.01\n"})(tmp_path)
    before = _snapshot(tmp_path)
    status, err, seconds = run_inprocess(argv, tmp_path, capsys)
    check_refusal(status, err, seconds, before, _snapshot(tmp_path))
    assert words in err, err


def test_capture_failure_is_one_line_without_torch_log(tmp_path: Path,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    """A micro-batch that divides the batch but overflows a tensor: torch's fake-tensor mode
    logged the failing op's traceback to the real stderr before dojo's one line."""
    argv = ("simulate", "gpt", "--system", "h100-cluster:8", "--plan",
            f"dp=8,mb={2**50}", "--batch", str(2**53))
    before = _snapshot(tmp_path)
    status, err, seconds = run_inprocess(argv, tmp_path, capfd)  # type: ignore[arg-type]
    check_refusal(status, err, seconds, before, _snapshot(tmp_path))


@pytest.mark.parametrize("sql", ["SELECT 'inf'::double AS x", "SELECT [1.0, 'nan'::double] AS x",
                                 "SELECT {'a': '-inf'::double} AS x"])
def test_query_json_has_no_nan_or_infinity(sql: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """JSON has no NaN or Infinity tokens: every non-finite number, however nested, is null."""
    set_up("clips", tmp_path)
    status = main(["data", "query", sql, "--catalog", str(tmp_path / "clips" / "catalog"),
                   "--format", "json"])
    out = capsys.readouterr().out
    assert status == 0
    rows = json.loads(out, parse_constant=lambda token: pytest.fail(f"{token} in {out}"))
    assert json.dumps(rows).count("null") == 1


def test_calibrate_keeps_an_existing_file_when_the_write_fails(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fitted system replaces --out whole or not at all (a write error, Ctrl-C)."""
    import os

    _files({"r.csv": RUNS + "mlp,dp=8,8,0.01\n", "m.toml": "keep"})(tmp_path)

    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    status, err, _ = run_inprocess(("calibrate", "--system", "h100-cluster", "--runs", "r.csv",
                                    "--out", "m.toml", "--iterations", "1"), tmp_path, capsys)
    assert status == 2 and "No space left" in err and "Traceback" not in err
    assert (tmp_path / "m.toml").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.toml", "r.csv"]


@pytest.fixture(scope="module")
def junk_server() -> Iterator[Callable[[bytes], str]]:
    """An HTTP server answering every request 200 with the JSON body set last (not dojo's)."""
    import http.server
    import threading

    answer = [b"{}"]

    class Handler(http.server.BaseHTTPRequestHandler):
        def _reply(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer[0])))
            self.end_headers()
            self.wfile.write(answer[0])

        do_GET = do_POST = _reply

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def serve(body: bytes) -> str:
        answer[0] = body
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    server.shutdown()


@pytest.mark.parametrize("verb", [("jobs",), ("usage",), ("logs", "j1"), ("cancel", "j1"),
                                  ("submit", "train", "mlp")])
@pytest.mark.parametrize("body", [b'{"x": 1}', b"[1, 2]", b"null", b'[{"id": "j"}]',
                                  b'{"id": "j", "state": 3}'])
def test_client_verbs_name_a_server_that_is_not_dojo(verb: tuple[str, ...], body: bytes,
                                                     junk_server: Callable[[bytes], str],
                                                     tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A 200 with other JSON (another service on the port, another version) was a KeyError or
    TypeError in the verb that read it."""
    monkeypatch.setenv("DOJO_TOKEN", "dojo_fuzz")
    argv = (*verb, "--server", junk_server(body))
    status, err, seconds = run_inprocess(argv, tmp_path, capsys)
    check_refusal(status, err, seconds, [], _snapshot(tmp_path))
    assert "not a dojo service" in err
