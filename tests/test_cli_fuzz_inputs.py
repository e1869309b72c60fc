"""Bad inputs no issue listed, under the contract of `test_cli_fuzz.py` (one error line naming
the file or flag, exit 2, no traceback, nothing written): found by hand-fuzzing every verb as a
new user would (docs/benchmarks.md, fuzz log). Each case also checks the words that name what was
wrong, so a case that fails some other way (a different error) does not pass by accident.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cli_fuzz_verbs import set_up
from dojo.config import MAX_CONFIG_BYTES
from test_cli_fuzz import _snapshot, check_refusal, one_line_test, run_inprocess

SERVER = ("--server", "http://127.0.0.1:9")  # nothing listens: a good token fails later
RUNS = "model,plan,batch,seconds"
SIM = ("simulate", "mlp", "--system", "h100-cluster:8", "--plan", "dp=8", "--batch", "8")
CAL = ("calibrate", "--system", "h100-cluster", "--runs", "r.csv", "--out", "m.toml",
       "--iterations", "1")


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda root: (root / name).write_bytes(data)


def _sparse(name: str, size: int) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        with (root / name).open("wb") as f:
            f.truncate(size)
    return setup


def _none(root: Path) -> None:
    pass


# (argv, environment, files to put in the case folder first, words the error must hold)
CASES: list[tuple[tuple[str, ...], dict[str, str], Callable[[Path], None], str]] = [
    # a token file that is empty or blank was an IndexError, one not UTF-8 a UnicodeDecodeError
    (("jobs", *SERVER), {"DOJO_CONFIG": "tok"}, _write("tok", b""), "tok: empty"),
    (("jobs", *SERVER), {"DOJO_CONFIG": "tok"}, _write("tok", b" \n\n"), "tok: empty"),
    (("usage", *SERVER), {"DOJO_CONFIG": "tok"}, _write("tok", b"\xff\xfe\n"),
     "tok: not UTF-8"),
    # and one of a gigabyte was read whole
    (("jobs", *SERVER), {"DOJO_CONFIG": "tok"}, _sparse("tok", 2**30), "tok: over 4,096 bytes"),
    # a system file past any real one was read whole (a MemoryError under `ulimit -v`)
    (("info", "s.toml"), {}, _sparse("s.toml", MAX_CONFIG_BYTES + 1),
     f"s.toml: over {MAX_CONFIG_BYTES:,} bytes"),
    # a setting given twice silently kept the last, where --plan dp=2,dp=8 is refused
    ((*SIM, "--set", "hidden=2", "--set", "hidden=3"), {}, _none,
     "--set: field 'hidden' = 'hidden=3': expected each key once"),
    ((*SIM, "--set", " =3"), {}, _none, "--set: top level = ' =3': expected key=value"),
    (CAL, {}, _write("r.csv", f"{RUNS},overrides\nmlp,dp=8,8,0.01,hidden=2;hidden=3\n".encode()),
     "column 'overrides' = 'hidden=2;hidden=3': expected each setting once"),
    # valid-but-inconsistent hardware: a device drawing more idle than busy was simulated
    (("info", "s.toml"), {}, _write("s.toml", b'extends = "h100-cluster"\nname = "s"\n'
                                    b'title = "s"\n[gpu]\nidle_watts = 1e4\n'),
     "s.toml: field 'gpu.idle_watts' = 10000.0: expected at most power_watts = 700 W"),
    # two outputs on one path: the trace silently replaced the report
    ((*SIM, "--report", "r.html", "--trace", "./r.html"), {}, _none,
     "--report r.html: the same file as --trace ./r.html"),
    # an output on an input: the trace replaced the user's system file, or their model's code
    (("simulate", "mlp", "--system", "h.toml:8", "--plan", "dp=8", "--batch", "8", "--trace",
      "h.toml"), {}, _write("h.toml", b'extends = "h100-cluster"\n'),
     "--trace h.toml: is the input file of --system h.toml:8"),
    (("simulate", "fac.py:factory", "--system", "h100-cluster:8", "--report", "fac.py"), {},
     _write("fac.py", b"def factory(): pass\n"), "--report fac.py: is the input file of model"),
    # a FIFO or a folder given as --runs was reported as "no such file"
    (CAL[:4] + ("adir", *CAL[5:]), {}, lambda root: (root / "adir").mkdir(),
     "--runs adir: is a folder"),
]

def _clips_and(extra: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        set_up("clips", root)
        extra(root)
    return setup


QUERY = ("data", "query", "SELECT 1", "--catalog", "clips/catalog", "--slices", "s.toml")
# a slices file past any real one was read whole
CASES.append((QUERY, {}, _clips_and(_sparse("s.toml", MAX_CONFIG_BYTES + 1)),
              f"s.toml: over {MAX_CONFIG_BYTES:,} bytes"))
if hasattr(os, "mkfifo"):
    CASES.append((CAL, {}, lambda root: os.mkfifo(root / "r.csv"),
                  "--runs r.csv: is a device or special file"))
    # a FIFO as the slices file: the read waited for a writer forever
    CASES.append((QUERY, {}, _clips_and(lambda root: os.mkfifo(root / "s.toml")),
                  "s.toml: is a device or special file"))


test_bad_inputs_are_refused_in_one_line = one_line_test(CASES)


def test_token_file_first_non_blank_line_is_the_token(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from dojo.client.http import load_token

    monkeypatch.delenv("DOJO_TOKEN", raising=False)
    monkeypatch.setenv("DOJO_CONFIG", str(tmp_path / "tok"))
    (tmp_path / "tok").write_bytes(b"\xef\xbb\xbf\r\n  dojo_abc \r\nrest\n")
    assert load_token() == "dojo_abc"


def test_an_output_through_a_symlink_writes_its_target(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The atomic write replaced the link itself with a regular file: `--trace /dev/stdout`
    (-> /proc/self/fd/1) swapped /dev/stdout for a file, for every process on the machine."""
    (tmp_path / "real.json").write_text("old")
    (tmp_path / "link.json").symlink_to("real.json")
    status, err, _ = run_inprocess((*SIM, "--trace", "link.json"), tmp_path, capsys)
    assert status == 0, err
    assert (tmp_path / "link.json").is_symlink()
    assert (tmp_path / "real.json").read_text().startswith('{"traceEvents"')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real.json"]


def test_a_huge_manifest_is_refused_unread(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3 GB manifest.json was read whole and decoded: a MemoryError traceback under
    `ulimit -v 4000000`. The bound (512 MiB) is lowered here so the case stays small."""
    from dojo.data import layout

    monkeypatch.setattr(layout, "MAX_MANIFEST_BYTES", 4096)
    set_up("clips", tmp_path)
    _sparse("clips/manifest.json", 2**20)(tmp_path)
    before = _snapshot(tmp_path)
    status, err, seconds = run_inprocess(("data", "check", "clips"), tmp_path, capsys)
    check_refusal(status, err, seconds, before, _snapshot(tmp_path))
    assert "manifest.json: over 4,096 bytes" in err, err


def test_sweep_checks_every_point_before_its_first_line(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    """A point whose batch split fails (dp 10^12 over a batch of 16) printed its progress line
    first: two lines on stderr for one refusal."""
    argv = ("sweep", "mlp", "--system", "a100-cluster", "--devices", "8,1000000000000",
            "--batch", "16")
    status, err, seconds = run_inprocess(argv, tmp_path, capsys)
    check_refusal(status, err, seconds, [], _snapshot(tmp_path))
    assert "field 'mb' = 1" in err, err
