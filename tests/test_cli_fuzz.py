"""Fuzz every `dojo` subcommand with random bad values (issue 14, "Done when").

The contract for a bad value: exit status 2; stderr is one line starting "dojo: error: "; no
"Traceback"; done within `TIME_LIMIT_S` (`SUBPROCESS_LIMIT_S` out of process, which adds
starting Python and importing torch); nothing written in the working folder (each case runs in
a fresh temporary folder, compared before and after).

argparse's own refusals (an integer flag given "abc", a missing required option) keep their
conventional form, and the contract accepts it: a usage block ("usage: dojo CMD ..." and its
indented continuation lines) followed by exactly one error line "dojo CMD: error: ...", exit 2.
That is still one error line; the usage lines are what `--help` would print first.

Cases are drawn from a seeded generator: each command has slots (a flag or positional) with the
classes of bad value that slot must refuse (zero, negative, huge, not a number, empty, unknown
name, missing file, a folder where a file is expected, unknown plan key...). The default run
draws `DEFAULT_PER_COMMAND` cases per command from a fixed seed (deterministic, ~30 s); the slow
run draws `SLOW_PER_COMMAND` from `DOJO_FUZZ_SEED` (default 14). Most cases run in-process through
`dojo.cli.main.main` (fast); commands that may start long work when a value slips through
(train, data) and the memory-growth reproductions run in a subprocess under RLIMIT_AS.

Failures in commands owned elsewhere are marked xfail(strict=True) in `KNOWN`, keyed by
(command, slot, class), with the issue item in the reason: fixing one makes its case XPASS,
which fails until the entry is removed.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli_fuzz_verbs import VERB_VALUES, VERBS, Command, Slot, set_up
from dojo.cli.main import main

TIME_LIMIT_S = 20.0
# A subprocess case also starts Python and imports torch: 5-10 s on a loaded 2-core machine.
SUBPROCESS_LIMIT_S = 30.0
MEMORY_LIMIT_BYTES = 4 * 2**30  # address space of a subprocess case (torch maps ~2 GB at import)
DEFAULT_PER_COMMAND = 3
SLOW_PER_COMMAND = int(os.environ.get("DOJO_FUZZ_CASES", "40"))
SEED = 14

# -- bad values, by class -------------------------------------------------------------------------


def _junk(rng: random.Random) -> str:
    return "".join(rng.choice("abcxyz_") for _ in range(rng.randint(3, 9)))


VALUES: dict[str, Callable[[random.Random], str]] = {
    "zero": lambda r: "0",
    "negative": lambda r: str(-r.choice([1, 8, r.randint(2, 10**6)])),
    "huge": lambda r: str(10 ** r.randint(16, 30)),  # past 2^53 samples and 2^40 devices
    "nonnumber": lambda r: r.choice(["abc", "1.5x", "nan", "--", _junk(r)]),
    "empty": lambda r: "",
    "unknown": lambda r: "no" + _junk(r),
    "missing": lambda r: f"missing_{_junk(r)}/none.toml",
    "folder": lambda r: "adir",
    "badext": lambda r: f"chart.{r.choice(['xyz', 'txt', 'jpegx'])}",
    "folder_out": lambda r: "adir",
    "no_parent": lambda r: f"missing_{_junk(r)}/out.png",
    "readonly": lambda r: "/proc/dojo_fuzz.png",
    "float_bad": lambda r: r.choice(["0", "-1", "nan", "inf", "-inf"]),
    "plan_key": lambda r: f"dp=1,{_junk(r)}=2",
    "plan_value": lambda r: r.choice(["dp=0", "dp=-2", "dp=abc", "tp=0", "pp=-1", "mb=0"]),
    "plan_dup": lambda r: "dp=2,dp=8",
    "set_key": lambda r: f"{_junk(r)}=1",
    "set_value": lambda r: r.choice(["layers=0", "layers=-1", "layers=abc", "hidden=0"]),
    "set_huge": lambda r: f"layers={10 ** r.randint(13, 30)}",
    "set_form": lambda r: r.choice(["layers", "=3", ""]),
    "system_count": lambda r: r.choice(["h100-cluster:0", "h100-cluster:-8", "h100-cluster:x",
                                        "h100-cluster:²",
                                        f"h100-cluster:{10 ** r.randint(13, 30)}"]),
    # a line break, NUL, terminal escape or bidi override in a name: the error stays one line
    "control": lambda r: r.choice(["v1\n", "h100-cluster\x00", "\x1b[2Jv1", "a\u202eb", "x\ry"]),
    "list_zero": lambda r: r.choice(["0,8", "8,0", "-8", "8,,16", "8,x"]),
    "list_empty": lambda r: r.choice(["", ",", " , "]),
}

# -- commands and their slots ---------------------------------------------------------------------

SIM = ["mlp", "--system", "h100-cluster:8", "--plan", "dp=8", "--batch", "8"]


COMMANDS: dict[str, Command] = {
    "info": Command(("info", "a100-cluster"), (
        Slot("system", None, ("unknown", "empty", "missing", "folder", "system_count",
                              "control"), 1),
        Slot("--devices", "--devices", ("zero", "negative", "huge", "nonnumber")),
    )),
    "inspect": Command(("inspect", "mlp"), (
        Slot("model", None, ("unknown", "empty", "control"), 1),
        Slot("--batch", "--batch", ("zero", "negative", "huge", "nonnumber", "empty")),
        Slot("--seq", "--seq", ("zero", "negative", "nonnumber")),
        Slot("--set", "--set", ("set_key", "set_value", "set_huge", "set_form")),
        Slot("--top", "--top", ("negative", "huge", "nonnumber", "empty")),   # 0: no table
    )),
    "simulate": Command(("simulate", *SIM), (
        Slot("model", None, ("unknown", "empty"), 1),
        Slot("--system", "--system", ("unknown", "empty", "missing", "folder", "system_count")),
        Slot("--plan", "--plan", ("plan_key", "plan_value", "plan_dup", "empty", "plan_new")),
        Slot("--batch", "--batch", ("zero", "negative", "huge", "nonnumber")),
        Slot("--set", "--set", ("set_key", "set_value", "set_huge")),
        Slot("--report", "--report", ("folder_out", "no_parent", "readonly")),
        Slot("--trace", "--trace", ("folder_out", "no_parent", "readonly")),
    )),
    "plan": Command(("plan", "mlp", "--system", "h100-cluster:8", "--batch", "8"), (
        Slot("--system", "--system", ("unknown", "empty", "missing", "system_count")),
        Slot("--batch", "--batch", ("zero", "negative", "nonnumber")),
        Slot("--devices", "--devices", ("zero", "negative", "nonnumber")),
        Slot("--top", "--top", ("zero", "negative", "nonnumber")),
        Slot("--set", "--set", ("set_key", "set_value", "set_huge")),
    )),
    "compare": Command(("compare", "mlp", "--systems", "h100-cluster:8", "--batch", "8"), (
        Slot("--systems", "--systems", ("unknown", "list_empty", "system_count")),
        Slot("--batch", "--batch", ("zero", "negative", "nonnumber")),
        Slot("--chart", "--chart", ("badext", "folder_out", "no_parent", "readonly")),
        Slot("--set", "--set", ("set_key", "set_value", "set_huge")),
        Slot("--seq", "--seq", ("zero", "negative", "nonnumber")),
    )),
    "sweep": Command(("sweep", "mlp", "--system", "a100-cluster", "--devices", "8,16",
                      "--batch", "16"), (
        Slot("--devices", "--devices", ("list_zero", "list_empty", "nonnumber")),
        Slot("--batch", "--batch", ("zero", "negative", "nonnumber")),
        Slot("--plot", "--plot", ("badext", "folder_out", "no_parent", "readonly")),
        Slot("--plan", "--plan", ("plan_key", "plan_value")),
        Slot("--system", "--system", ("unknown", "missing")),
        Slot("--seq", "--seq", ("zero", "negative")),
        Slot("--set", "--set", ("set_key", "set_value", "set_huge")),
    )),
    "validate": Command(("validate", "--only", "narayanan21-t1-1.7b"), (
        Slot("--only", "--only", ("unknown", "list_empty")),
    )),
    "calibrate": Command(("calibrate", "--system", "h100-cluster", "--runs", "runs.csv",
                          "--out", "mine.toml"), (
        Slot("--system", "--system", ("unknown", "empty", "missing", "folder", "system_count")),
        Slot("--runs", "--runs", ("missing", "folder", "afile", "empty")),
        Slot("--out", "--out", ("badext", "folder_out", "no_parent", "readonly")),
        Slot("--iterations", "--iterations", ("zero", "negative", "nonnumber")),
    )),
    "run": Command(("run", "--model", "mlp", "--steps", "1"), (
        Slot("--steps", "--steps", ("zero", "negative", "nonnumber")),
        Slot("--timeout", "--timeout", ("float_bad",)),
        Slot("--plan", "--plan", ("plan_key", "plan_value", "huge_ranks")),
        Slot("--model", "--model", ("unknown",)),
        Slot("--checkpoint", "--checkpoint", ("afile", "readonly_dir")),
        Slot("--nproc", "--nproc", ("zero", "negative", "huge")),
    )),
    "data synth": Command(("data", "synth", "--out", "clips", "--clips", "2"), (
        Slot("--clips", "--clips", ("zero", "negative", "huge", "nonnumber")),
        Slot("--cameras", "--cameras", ("zero", "negative", "huge")),
        Slot("--frames", "--frames", ("zero", "negative", "huge")),
        Slot("--size", "--size", ("zero", "nonnumber", "empty")),
        Slot("--out", "--out", ("empty", "readonly_dir", "afile", "url_path")),
        Slot("--scenario", "--scenario", ("unknown",)),
        Slot("--weather", "--weather", ("unknown",)),
        Slot("--time-of-day", "--time-of-day", ("unknown",)),
        Slot("--catalog", "--catalog", ("afile", "readonly_dir")),
    ), subprocess=True),
    "train": Command(("train", "occupancy", "--steps", "1", "--out", "runs/x"), (
        Slot("model", None, ("unknown",), 1),
        Slot("--steps", "--steps", ("zero", "negative", "nonnumber")),
        Slot("--batch", "--batch", ("zero", "negative", "huge")),
        Slot("--lr", "--lr", ("float_bad",)),
        Slot("--system", "--system", ("unknown", "missing")),
        Slot("--precision", "--precision", ("unknown",)),
        Slot("--out", "--out", ("empty", "afile", "readonly_dir")),
        Slot("--data", "--data", ("url_path", "afile")),
        Slot("--rounds", "--rounds", ("zero", "negative", "huge")),
        Slot("--budget", "--budget", ("zero", "negative", "huge")),
        Slot("--slices", "--slices", ("missing", "afile")),
        Slot("--mine-by", "--mine-by", ("unknown", "empty")),
        Slot("--train-set", "--train-set", ("missing", "afile", "unknown")),
    ), subprocess=True, default_cases=1),
}

VALUES.update({
    "huge_ranks": lambda r: f"dp={10 ** r.randint(3, 7)}",
    "afile": lambda r: "afile.txt",
    "readonly_dir": lambda r: "/proc/dojo_fuzz",
    # today's plan vocabulary (issue 11) on the mlp base line: each must name field and arithmetic
    "plan_new": lambda r: r.choice([
        "dp=8,cp=0", "dp=4,cp=2", "dp=8,ep=2", "dp=8,ep=0", "dp=8,precision=fp9",
        "dp=8,fp8_params=on", "dp=8,fp8_params=maybe", "dp=8,tp_overlap=on", "dp=8,tp_overlap=x",
        "dp=8,grad_reduce=fp3", "dp=8,recompute=ops:", "dp=8,recompute=ops:nosuchop",
        "dp=8,recompute=ops:mm,mm", "dp=8,recompute=modules:attn", "dp=8,recompute=modules:",
        "dp=8,cp_comm=xx", "dp=8,imbalance=1e300",
        "dp=8,imbalance=nan", f"dp=8,cp={10 ** r.randint(13, 30)}", "dp=8,stages=1+1"]),
    **VERB_VALUES,
})
COMMANDS.update(VERBS)

# Known failures, each with the issue item in its reason. (command, slot, class).
KNOWN: dict[tuple[str, str, str], str] = {}


def _known(command: str, slot: str, cls: str) -> str | None:
    return KNOWN.get((command, slot, cls))


# -- drawing cases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    command: str
    slot: str
    cls: str
    argv: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.command}-{self.slot}-{self.cls}-{'_'.join(self.argv)[-40:]}"


def _put(cmd: Command, slot: Slot, value: str) -> tuple[str, ...]:
    argv = list(cmd.argv)
    if slot.flag is None:
        argv[slot.index] = value
        return tuple(argv)
    if slot.flag in argv:
        argv[argv.index(slot.flag) + 1] = value
        return tuple(argv)
    return (*argv, slot.flag, value)


def draw(per_command: int | None, seed: int) -> list[Case]:
    """`per_command` cases per command (None: each command's `default_cases`, leaving out the
    `KNOWN` failures, which may run to the time limit), each a (slot, class) pair and a value of
    that class; the pairs cycle through every slot and class before any repeats."""
    rng = random.Random(seed)
    cases = []
    for name, cmd in COMMANDS.items():
        pairs = [(s, c) for s in cmd.slots for c in s.classes
                 if per_command is not None or (name, s.name, c) not in KNOWN]
        rng.shuffle(pairs)
        for k in range(cmd.default_cases if per_command is None else per_command):
            slot, cls = pairs[k % len(pairs)]
            cases.append(Case(name, slot.name, cls, _put(cmd, slot, VALUES[cls](rng))))
    return cases


def _params(cases: list[Case]) -> list[Any]:
    out = []
    for case in cases:
        reason = _known(case.command, case.slot, case.cls)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


# -- the contract ---------------------------------------------------------------------------------


def _snapshot(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1)
                  for p in root.rglob("*"))


def _prepare(root: Path) -> None:
    (root / "adir").mkdir()
    (root / "adir" / "x.txt").write_text("x")
    (root / "afile.txt").write_text("x")
    (root / "runs.csv").write_text("model,plan,batch,seconds\nmlp,dp=8,8,0.01\n")


def check_refusal(status: int, err: str, seconds: float, before: list[tuple[str, int]],
                  after: list[tuple[str, int]], limit_s: float = TIME_LIMIT_S) -> None:
    """Assert the contract (module docstring) on one finished case."""
    assert "Traceback" not in err, err
    assert status == 2, f"exit {status}, stderr: {err[-800:]}"
    lines = err.strip("\n").splitlines()
    assert lines, "no error line"
    if lines[-1].startswith("dojo: error: "):
        assert len(lines) == 1, f"expected one line, got {len(lines)}: {err[-800:]}"
    else:  # argparse: usage block, then "dojo CMD: error: ..."
        assert re.match(r"dojo( [\w-]+)*: error: ", lines[-1]), err
        assert lines[0].startswith("usage: dojo") and all(
            line.startswith(" ") for line in lines[1:-1]), err
    assert seconds < limit_s, f"took {seconds:.1f} s"
    assert after == before, "the command wrote files"


def run_inprocess(argv: tuple[str, ...], cwd: Path, capsys: pytest.CaptureFixture[str]
                  ) -> tuple[int, str, float]:
    old = os.getcwd()
    os.chdir(cwd)
    start = time.monotonic()
    try:
        try:
            status = main(list(argv))
        except SystemExit as done:  # argparse exits itself
            status = int(done.code or 0)
    finally:
        os.chdir(old)
    seconds = time.monotonic() - start
    return status, capsys.readouterr().err, seconds


def refused_in_one_line(argv: tuple[str, ...], env: dict[str, str],
                        setup: Callable[[Path], None], words: str, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    """One case of the bad-input tables: `setup` the folder, run `argv` in it with `env`, and
    assert the contract (`check_refusal`) and that the error line holds `words`."""
    monkeypatch.delenv("DOJO_TOKEN", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    setup(tmp_path)
    before = _snapshot(tmp_path)
    status, err, seconds = run_inprocess(argv, tmp_path, capsys)
    check_refusal(status, err, seconds, before, _snapshot(tmp_path))
    assert words in err, err


TableCase = tuple[tuple[str, ...], dict[str, str], Callable[[Path], None], str]


def one_line_test(cases: list[TableCase]) -> Callable[..., None]:
    """The test of one bad-input table of (argv, env, setup, words) cases: each case
    `refused_in_one_line`, its id from its argv and words."""

    @pytest.mark.parametrize(("argv", "env", "setup", "words"), [
        pytest.param(*case, id="_".join(case[0])[:60] + "-" + case[3][:20]) for case in cases])
    def test(argv: tuple[str, ...], env: dict[str, str], setup: Callable[[Path], None],
             words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
             monkeypatch: pytest.MonkeyPatch) -> None:
        refused_in_one_line(argv, env, setup, words, tmp_path, capsys, monkeypatch)

    return test


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))


def run_subprocess(argv: tuple[str, ...], cwd: Path) -> tuple[int, str, float]:
    """`python -m dojo.cli.main ARGV` in `cwd` under RLIMIT_AS; killed 10 s past the limit."""
    start = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "dojo.cli.main", *argv], cwd=cwd,
                              capture_output=True, text=True, timeout=SUBPROCESS_LIMIT_S + 10,
                              preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired as late:
        err = late.stderr.decode() if isinstance(late.stderr, bytes) else (late.stderr or "")
        return -9, err, time.monotonic() - start
    return done.returncode, done.stderr, time.monotonic() - start


def _run_case(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str],
              monkeypatch: pytest.MonkeyPatch) -> None:
    _prepare(tmp_path)
    cmd = COMMANDS[case.command]
    set_up(cmd.setup, tmp_path)
    for key, value in cmd.env:
        monkeypatch.setenv(key, value)
    before = _snapshot(tmp_path)
    out_of_process = cmd.subprocess
    if out_of_process:
        status, err, seconds = run_subprocess(case.argv, tmp_path)
    else:
        status, err, seconds = run_inprocess(case.argv, tmp_path, capsys)
    check_refusal(status, err, seconds, before, _snapshot(tmp_path),
                  SUBPROCESS_LIMIT_S if out_of_process else TIME_LIMIT_S)


@pytest.mark.parametrize("case", _params(draw(None, SEED)))
def test_bad_values_are_refused_in_one_line(case: Case, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _run_case(case, tmp_path, capsys, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("case", _params(draw(SLOW_PER_COMMAND,
                                              int(os.environ.get("DOJO_FUZZ_SEED", SEED)))))
def test_bad_values_are_refused_in_one_line_slow(case: Case, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _run_case(case, tmp_path, capsys, monkeypatch)


# -- the reproductions of issue 14, each as a case of the same contract ---------------------------

BIG_TRAY = 'extends = "v1"\nname = "big"\ntitle = "big"\n[tray]\ncount = 1000000000000\n' \
           'grid = [1000000, 1000000]\n'
FACTORY = ("import torch\ndef factory():\n    m = torch.nn.Linear(4, 2)\n    return m, "
           "(torch.zeros(3, 4),), lambda out: out.sum(), torch.optim.SGD(m.parameters(), "
           "lr=0.1)\n")

# (argv, issue item, out of process?, slow?)
DIRECTED: list[tuple[tuple[str, ...], str, bool, bool]] = [
    (("run", "--model", "mlp", "--steps", "0"), "5", False, False),
    (("validate", "--only", "nosuchcase"), "5", False, False),
    (("simulate", "gpt2-small", "--system", "v1", "--batch", "0"), "5", False, False),
    (("inspect", "gpt", "--set", "layers=1000000000000000000"), "6", True, False),
    (("simulate", "mlp", "--system", "big.toml", "--batch", "8"), "6", False, False),
    (("run", "--model", "gpt", "--plan", "dp=1000", "--batch", "1000", "--steps", "1"), "6",
     False, False),
    (("run", "--nproc", "100000", "x.py"), "6", False, False),
    (("run", "--model", "mlp", "--timeout", "0"), "6", False, False),
    (("simulate", "mlp", "--system", "h100-cluster:8", "--plan", "dp=8", "--report", "adir"),
     "8", False, False),
    (("run", "--model", "mlp", "--checkpoint", "/proc/dojo_fuzz"), "8", False, False),
    (("train", "occupancy", "--steps", "1", "--out", "afile.txt"), "8", True, True),
    (("data", "synth", "--out", "/proc/dojo_fuzz", "--clips", "1"), "8", True, True),
    (("train", "occupancy", "--system", "a100-cluster", "--steps", "1", "--out", "runs/x"), "7",
     True, True),
    (("sweep", "mlp", "--system", "a100-cluster", "--devices", "0,8", "--batch", "8"), "9",
     False, False),
    (("info", "a100-cluster", "--devices", "-8"), "9", False, False),
    (("info", "a100-cluster:16", "--devices", "32"), "9", False, False),
    (("simulate", "mlp", "--system", "h100-cluster:8", "--plan", "dp=2,dp=8"), "9", False,
     False),
    (("compare", "mlp", "--systems", "v1", "--chart", "c.xyz"), "9", False, False),
    (("compare", "mlp", "--systems", ""), "9", False, False),
    (("sweep", "mlp", "--systems", "", "--batch", "8"), "9", False, False),
    (("inspect", "fac.py:factory", "--set", "x=1"), "9", False, False),
    (("inspect", "fac.py:factory", "--batch", "4"), "9", False, False),
    (("run", "--model", "mlp", "--resume"), "9", False, False),
    # a URL where a local folder goes made a local "s3:" folder and crashed in the encoder
    (("data", "synth", "--out", "s3://nobucket/x", "--clips", "1"), "13", True, False),
    (("train", "occupancy", "--data", "s3://nobucket/x", "--synth", "--steps", "1"), "13", True,
     True),
]
DIRECTED_KNOWN: dict[tuple[str, ...], str] = {}


def _directed() -> list[Any]:
    out = []
    for argv, item, sub, slow in DIRECTED:
        marks = [pytest.mark.slow] if slow else []
        if argv in DIRECTED_KNOWN:
            marks.append(pytest.mark.xfail(strict=True, reason=DIRECTED_KNOWN[argv]))
        out.append(pytest.param(argv, sub, id=f"item{item}-{'_'.join(argv)[:60]}", marks=marks))
    return out


@pytest.mark.parametrize(("argv", "out_of_process"), _directed())
def test_issue14_reproductions_are_refused(argv: tuple[str, ...], out_of_process: bool,
                                           tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _prepare(tmp_path)
    (tmp_path / "big.toml").write_text(BIG_TRAY)
    (tmp_path / "fac.py").write_text(FACTORY)
    (tmp_path / "x.py").write_text("")
    before = _snapshot(tmp_path)
    if out_of_process:
        status, err, seconds = run_subprocess(argv, tmp_path)
    else:
        status, err, seconds = run_inprocess(argv, tmp_path, capsys)
    check_refusal(status, err, seconds, before, _snapshot(tmp_path),
                  SUBPROCESS_LIMIT_S if out_of_process else TIME_LIMIT_S)


def _verbs(parser: Any, path: tuple[str, ...] = ()) -> set[str]:
    """Every leaf command of the parser as typed: "info", "data query", "admin tenant create"."""
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {" ".join(path)}
    return set().union(*(_verbs(p, (*path, name)) for name, p in subs[0].choices.items()))


def test_every_command_is_fuzzed() -> None:
    """A command or verb added to the CLI without slots here would escape the contract."""
    from dojo.cli.main import build_parser

    assert sorted(_verbs(build_parser()) - set(COMMANDS)) == []
