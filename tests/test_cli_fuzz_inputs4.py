"""Bad inputs of issue 14's fifth round, under the contract of `test_cli_fuzz.py` (one error
line naming the flag or file, the field, the value and what was expected; exit 2; no
traceback; nothing written). Each case checks those words, so a case refused some other way
(or later, by another check) does not pass; every case fails on the code before the round:

- a system file's cost model is checked where the file is loaded (`dojo.hardware.loader`), so
  every command refuses it, not only those that simulate: its name, and each override of its
  calibration (`[gpu.calibration]`, `[gpu.stacks.NAME]`), which `simulate` checked only for the
  stack it was given;
- `data synth` holds a clip's occupancy grids in memory with its pixels, and a set renders at
  most a million default clips' pixels and cells (a set of 4096 x 4096 views and grids ran for
  hours, its first progress line after the first clip);
- the rest of the fifth round's findings (see each case's comment).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cli_fuzz_verbs import set_up
from test_cli_fuzz import one_line_test

H100 = 'extends = "h100-cluster"\nname = "s"\ntitle = "s"\n'
CAL = "expected the name of a simulator calibration, one of a100, cpu, d1, h100"
# where a value slipped through, the old code went on to write here and failed otherwise
NO_OUT = ("data", "synth", "--out", "/proc/dojo_fuzz")


def _none(root: Path) -> None:
    pass


def _system(body: str) -> Callable[[Path], None]:
    """s.toml: the shipped H100 cluster with `body` (TOML) over it."""
    def setup(root: Path) -> None:
        (root / "s.toml").write_text(H100 + body)
    return setup


def _file(name: str, text: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        (root / name).write_text(text)
    return setup


def _clips_with(name: str, text: str) -> Callable[[Path], None]:
    """The 1-clip set of `cli_fuzz_verbs` at ./clips, and file `name` holding `text`."""
    def setup(root: Path) -> None:
        set_up("clips", root)
        (root / name).write_text(text)
    return setup


def _link(name: str, target: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        (root / name).symlink_to(target)
    return setup


# (argv, environment, files to put in the case folder first, words the error must hold)
CASES: list[tuple[tuple[str, ...], dict[str, str], Callable[[Path], None], str]] = [
    # 1. a cost model no simulator knows: `info` printed the system, `simulate` refused it
    # without naming the file
    (("info", "s.toml"), {}, _system('[gpu]\ncost_model = "nosuch"\n'),
     f"s.toml: field 'gpu.cost_model' = 'nosuch': {CAL}"),
    (("info", "s.toml"), {}, _system('[gpu]\ncost_model = ""\n'),
     f"s.toml: field 'gpu.cost_model' is missing: {CAL}"),
    (("compare", "mlp", "--systems", "s.toml:8", "--batch", "8"), {},
     _system('[gpu]\ncost_model = "h200"\n'), f"s.toml: field 'gpu.cost_model' = 'h200': {CAL}"),
    # ... and overrides of its calibration that no simulation would take
    (("info", "s.toml"), {}, _system("[gpu.calibration]\nnosuch = 1\n"),
     "s.toml: field 'gpu.calibration.nosuch' = 1.0: expected one of the keys "),
    (("info", "s.toml"), {}, _system("[gpu.calibration]\nmatrix_efficiency = 5\n"),
     "s.toml: field 'gpu.calibration.matrix_efficiency' = 5.0: expected a number <= 1"),
    # a stack's overrides were checked only when --stack named it
    (("simulate", "mlp", "--system", "s.toml:8", "--batch", "8"), {},
     _system("[gpu.stacks.megatron-lm]\nmatrix_efficiency = 7\n"),
     "s.toml: field 'gpu.stacks.megatron-lm.matrix_efficiency' = 7.0: expected a number <= 1"),
    # 3. a mesh grid far larger than its count: [10^8, 10^8] for a chip's 354 nodes passed
    # (rows x cols >= count), and `simulate` walked its empty places for ever
    (("info", "g.toml"), {}, _file("g.toml", 'extends = "v1"\n[chip]\ngrid = [100000000, '
                                   '100000000]\n'),
     "g.toml: field 'chip.grid' = [100000000, 100000000]: expected rows x cols >= count = 354 "
     "with no row or column empty: (rows - 1) x cols < count and rows x (cols - 1) < count"),
    (("info", "g.toml"), {}, _file("g.toml", 'extends = "v1"\n[chip]\ngrid = [1, 400]\n'),
     "g.toml: field 'chip.grid' = [1, 400]: expected rows x cols >= count = 354 with no row"),
    # 4. a stack named with a terminal escape: calibrate wrote it into the system file, whose
    # tables and reports then carried it (a system's name and title are refused so already)
    (("calibrate", "--system", "h100-cluster", "--runs", "r.csv", "--out", "m.toml"), {},
     _file("r.csv", "model,plan,batch,seconds,stack\nmlp,dp=8,8,0.01,a\x1b[2Jb\n"),
     "r.csv: row 2, column 'stack' = 'a\\x1b[2Jb': expected a stack name of printable "
     "characters on one line"),
    (("info", "s.toml"), {}, _system('[gpu.stacks."a\\u000ab"]\nmatrix_efficiency = 0.5\n'),
     "s.toml: field 'gpu.stacks' = 'a\\nb': expected stack names that are non-empty strings of "
     "printable characters on one line"),
    # 5. a slice's `where` was bound only when the catalog's views were made: `dojo train`
    # trained for minutes before its evaluation refused it, and the error named "slices", not
    # the file; a second statement after ';' ran (it dropped the clips view)
    (("train", "occupancy", "--steps", "1", "--out", "r", "--slices", "sl.toml"), {},
     _file("sl.toml", '[slices.a]\nwhere = ""\n'),
     "sl.toml: field 'slices.a.where' = '': expected a SQL condition on the clips view (Parser "
     "Error"),
    (("data", "query", "SELECT 1", "--catalog", "clips/catalog", "--slices", "sl.toml"), {},
     _clips_with("sl.toml", '[slices.a]\nwhere = "nosuchcol = 1"\n'),
     "sl.toml: field 'slices.a.where' = 'nosuchcol = 1': expected a SQL condition on the clips "
     "view (Binder Error"),
    (("data", "query", "SELECT 1", "--catalog", "clips/catalog", "--slices", "sl.toml"), {},
     _clips_with("sl.toml", '[slices.a]\nwhere = "1=1; DROP VIEW clips"\n'),
     "sl.toml: field 'slices.a.where' = '1=1; DROP VIEW clips': expected one SQL condition on "
     "the clips view, not a second statement after ';'"),
    # 6. a NUL in an argument (in-process callers; no exec'd argv holds one): open() raised
    # ValueError, a traceback
    (("calibrate", "--system", "h100-cluster", "--runs", "runs.csv", "--out", "m.toml\x00"),
     {}, _file("runs.csv", "model,plan,batch,seconds\nmlp,dp=8,8,0.01\n"),
     "argument 7 = 'm.toml\\x00': expected no NUL character"),
    # 7. --out a symbolic link to nothing: the whole set was rendered, then its rename onto
    # the link failed (a progress line and the error: two lines, and the work lost)
    (("data", "synth", "--out", "o", "--clips", "1", "--cameras", "1", "--frames", "2",
      "--size", "32x32"), {}, _link("o", "nowhere"),
     "o: a symbolic link to 'nowhere', which does not exist; expected a folder for the clip "
     "set, or a new path"),
    # ... and its siblings, where a new folder is made under a link to nothing
    # (`paths.nearest_existing` took the link's parent as the place to create it)
    (("train", "occupancy", "--steps", "1", "--out", "o"), {}, _link("o", "nowhere"),
     "o: cannot create it, 'o' is a symbolic link to 'nowhere', which does not exist (--out "
     "expects a folder path)"),
    (("run", "--model", "mlp", "--steps", "1", "--checkpoint", "o/ck"), {},
     _link("o", "nowhere"), "--checkpoint o/ck: o is a symbolic link to 'nowhere', which does "
     "not exist, not a folder"),
    # 8. a server URL with a line break (DOJO_SERVER read from a file) or an escape: a
    # traceback from http.client (the Host header, the request line)
    (("jobs",), {"DOJO_TOKEN": "dojo_x", "DOJO_SERVER": "http://127.0.0.1:9\n"}, _none,
     "--server: field 'server' = 'http://127.0.0.1:9\\n': expected an http:// or https:// URL "
     "like http://127.0.0.1:8600, without spaces, line breaks or control characters"),
    (("usage", "--server", "http://127.0.0.1:9/\x1b[2J"), {"DOJO_TOKEN": "dojo_x"}, _none,
     "field 'server' = 'http://127.0.0.1:9/\\x1b[2J': expected an http:// or https:// URL"),
    # 9. submit --idempotency-key with a non-ASCII character: a UnicodeEncodeError traceback
    # (it goes out as an HTTP header)
    (("submit", "train", "mlp", "--server", "http://127.0.0.1:9", "--idempotency-key",
      "a\u202eb"), {"DOJO_TOKEN": "dojo_x"}, _none,
     "--idempotency-key: field 'idempotency_key' = 'a\\u202eb': expected visible ASCII "
     "characters, no spaces"),
    # 10. train --measure-decode with DOJO_CACHE a file: a NotADirectoryError traceback from
    # removing the probe's temporary file (it hid the error being reported); now refused
    # before any work, as --out is
    (("train", "occupancy", "--steps", "1", "--out", "r", "--measure-decode"),
     {"DOJO_CACHE": "afile.txt"}, _file("afile.txt", "x"),
     "afile.txt/decode: cannot create it, 'afile.txt' is a file (DOJO_CACHE expects a folder "
     "path)"),
    # 2. data synth: the occupancy grids of a clip (frames x grid^2 B) were left out of its
    # memory bound: 100,000 frames of a 4096 x 4096 grid were 1.6 TB
    ((*NO_OUT, "--clips", "1", "--cameras", "1", "--size", "16x16", "--grid", "4096",
      "--frames", "100000"), {}, _none,
     "field 'frames' = 100000: expected at most 255 at 1 cameras x 16 x 16 and a 4096 x 4096 "
     "grid (a clip is held in memory: 100000 x (1 x 16 x 16 x 3 B + 4096 x 4096 B) = "),
    ((*NO_OUT, "--clips", "1", "--size", "4096x4096", "--grid", "4096", "--frames", "14"), {},
     _none, "field 'frames' = 14: expected at most 13 at 6 cameras x 4096 x 4096 and a 4096 x "
     "4096 grid"),
    # ... and a set's work was bounded only by its clip count: a million clips of any size
    ((*NO_OUT, "--clips", "2000", "--cameras", "1", "--size", "4096x4096", "--grid", "4096"),
     {}, _none, "field 'clips' = 2000: expected at most 1,129 clips of 8 frames x (1 x 4096 x "
     "4096 pixels + 4096 x 4096 cells) (a set renders at most 303,104,000,000 pixels and cells"),
    ((*NO_OUT, "--clips", "1000000", "--frames", "9"), {}, _none,
     "field 'clips' = 1000000: expected at most 888,888 clips of 9 frames"),
]


test_bad_inputs_are_refused_in_one_line = one_line_test(CASES)
