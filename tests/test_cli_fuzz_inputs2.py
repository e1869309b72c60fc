"""Bad inputs of issue 14's third round, under the contract of `test_cli_fuzz.py` (one error
line naming the flag or file, exit 2, no traceback, nothing written). Each case checks the words
that name what was wrong, so a case refused some other way does not pass by accident:

- numbers in other scripts' digits ('１６', '١٦') or with '_' separators ('1_6'), which int() and
  float() read silently: refused by every flag, --set, --plan, stages= and runs CSV alike;
- --plan with an empty item (a trailing or doubled comma), an empty key or an empty value;
- an output over an input: calibrate --out on --system, on a file --system extends, on --runs
  (symlinks and hard links resolved);
- a catalog in the clip set's own folder or a clip's folder (index and synth);
- an item twice in --systems or --devices.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cli_fuzz_verbs import set_up
from test_cli_fuzz import one_line_test, run_inprocess

SERVER = ("--server", "http://127.0.0.1:9")
SIM = ("simulate", "mlp", "--system", "h100-cluster:8", "--batch", "8")
CAL = ("calibrate", "--system", "h.toml", "--runs", "r.csv", "--iterations", "1")
BASE = b'extends = "h100-cluster"\n'
RUNS = b"model,plan,batch,seconds\nmlp,dp=8,8,0.01\n"
ASCII = "ASCII digits 0-9 without '_' separators"


def _files(*pairs: tuple[str, bytes]) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        for name, data in pairs:
            (root / name).write_bytes(data)
    return setup


def _none(root: Path) -> None:
    pass


def _cal_files(root: Path) -> None:
    _files(("h.toml", BASE), ("r.csv", RUNS), ("a.toml", b'extends = "h.toml"\nname = "a"\n'))(
        root)
    (root / "link.toml").symlink_to("h.toml")
    os.link(root / "h.toml", root / "hard.toml")
    (root / "r.toml").symlink_to("r.csv")


def _clips(root: Path) -> None:
    set_up("clips", root)


# (argv, environment, files to put in the case folder first, words the error must hold)
CASES: list[tuple[tuple[str, ...], dict[str, str], Callable[[Path], None], str]] = [
    # 1. other scripts' digits and '_' were read as numbers: fullwidth 16 simulated a batch of 16
    ((*SIM, "--batch", "１６"), {}, _none,
     f"argument --batch: '１６': expected an integer in {ASCII}"),
    ((*SIM, "--batch", "1_6"), {}, _none, "argument --batch: '1_6': expected an integer"),
    (("info", "h100-cluster", "--devices", "٨"), {}, _none, "argument --devices: '٨'"),
    (("plan", "mlp", "--system", "h100-cluster:8", "--top", "５"), {}, _none,
     "argument --top: '５'"),
    ((*SIM, "--plan", "dp=８"), {}, _none, f"field 'dp' = '８': expected an integer in {ASCII}"),
    ((*SIM, "--plan", "dp=1_6"), {}, _none, "field 'dp' = '1_6': expected an integer in ASCII"),
    ((*SIM, "--plan", "dp=2,pp=4,stages=1:٢:2:1"), {}, _none, "('٢' is not one), in ASCII"),
    ((*SIM, "--plan", "dp=8", "--set", "layers=٣"), {}, _none,
     "--set: field 'layers' = '٣': expected an integer in ASCII"),
    (("sweep", "mlp", "--system", "h100-cluster", "--devices", "8,１６", "--batch", "16"), {},
     _none, f"--devices: field 'devices' = '8,１６': expected comma-separated integers >= 1, "
     f"like 8,16,32, in {ASCII}"),
    (("inspect", "mlp", "--top", "５"), {}, _none,
     "--top: field 'top' = '５': expected an integer"),
    (("data", "synth", "--out", "s", "--clips", "1", "--frames", "２"), {}, _none,
     "--frames: field 'frames' = '２': expected an integer in ASCII"),
    (("data", "synth", "--out", "s", "--clips", "1", "--size", "３２x32"), {}, _none,
     "--size: field 'size' = '３２x32': expected WxH in pixels, e.g. 96x64, in ASCII"),
    (("data", "fps", "clips", "--seconds", "١"), {}, _none,
     "--seconds: field 'seconds' = '١': expected a number in ASCII"),
    (("train", "occupancy", "--steps", "５", "--out", "run"), {}, _none,
     "--steps: field 'steps' = '５': expected an integer in ASCII"),
    (("run", "--timeout", "١", "x.py"), {}, _none, "argument --timeout: '١': expected a number"),
    (("jobs", *SERVER, "--timeout-s", "３０"), {"DOJO_TOKEN": "dojo_x"}, _none,
     "--timeout-s: field 'timeout_s' = '３０'"),
    ((*CAL, "--out", "m.toml"), {}, _files(("h.toml", BASE), (
        "r.csv", "model,plan,batch,seconds\nmlp,dp=8,8,٠.٠١\n".encode())),
     "column 'seconds' = '٠.٠١': expected measured seconds per step, a number > 0 in ASCII"),
    # 2. an empty --plan item was dropped (dp=2, ran dp=2), an empty key was an unknown key
    ((*SIM, "--plan", "dp=8,"), {}, _none,
     "--plan: field 'plan' = 'dp=8,': expected key=value pairs joined by single commas (an item "
     "is empty: a trailing or doubled comma)"),
    ((*SIM, "--plan", "dp=4,,tp=2"), {}, _none, "'dp=4,,tp=2': expected key=value pairs joined"),
    ((*SIM, "--plan", "=2"), {}, _none,
     "--plan: field 'plan' = '=2': expected key=value with a key and a value"),
    ((*SIM, "--plan", "dp="), {}, _none,
     "--plan: field 'dp' = 'dp=': expected key=value with a key and a value"),
    # 3. calibrate --out replaced the system file it was fitted from, or the runs
    ((*CAL, "--out", "h.toml"), {}, _cal_files,
     "--out h.toml: is the input file of --system h.toml: expected an output path"),
    ((*CAL, "--out", "./link.toml"), {}, _cal_files,
     "--out ./link.toml: is the input file of --system h.toml"),
    ((*CAL, "--out", "hard.toml"), {}, _cal_files,
     "--out hard.toml: is the input file of --system h.toml"),
    (("calibrate", "--system", "a.toml", "--runs", "r.csv", "--out", "h.toml"), {}, _cal_files,
     "--out h.toml: is the input file of --system a.toml, which extends "),
    (("calibrate", "--system", "h.toml", "--runs", "r.toml", "--out", "r.toml"), {}, _cal_files,
     "--out r.toml: is the input file of --runs r.toml"),
    (("simulate", "mlp", "--system", "a.toml:8", "--plan", "dp=8", "--batch", "8", "--trace",
      "h.toml"), {}, _cal_files, "--trace h.toml: is the input file of --system a.toml:8, which "
     "extends "),
    # 4. a catalog in the set's folder or a clip's folder: its tables among the clip files
    (("data", "index", "clips", "--catalog", "clips"), {}, _clips,
     "--catalog: field 'catalog' = 'clips': expected a folder apart from the clip files of clips"),
    (("data", "index", "clips", "--catalog", "./clips/clip_0000/"), {}, _clips,
     "expected a folder apart from the clip files of clips"),
    (("data", "synth", "--out", "s", "--clips", "1", "--frames", "2", "--size", "32x32",
      "--catalog", "s"), {}, _none, "--catalog: field 'catalog' = 's': expected a folder apart"),
    (("data", "synth", "--out", "s", "--clips", "2", "--frames", "2", "--size", "32x32",
      "--catalog", "s/clip_0001"), {}, _none, "expected a folder apart from the clip files of s"),
    # 5. an item twice printed the same row twice (a typo for another item, most likely)
    (("compare", "mlp", "--systems", "v1,v1"), {}, _none,
     "--systems: field 'systems' = 'v1,v1': expected each system once (v1 is given twice)"),
    (("compare", "mlp", "--systems", "h.toml,./h.toml"), {}, _files(("h.toml", BASE)),
     "expected each system once (./h.toml is the same as h.toml)"),
    (("sweep", "mlp", "--systems", "tile,v1,tile", "--batch", "16"), {}, _none,
     "expected each system once (tile is given twice)"),
    (("sweep", "mlp", "--system", "h100-cluster", "--devices", "8,16,8", "--batch", "16"), {},
     _none, "--devices: field 'devices' = '8,16,8': expected each value once (8 is given twice)"),
    # found fuzzing past the list: unbounded work (--top past the plan count simulated every
    # plan; 10^20 steps ran for ever), a progress line before the refusal, a seed past 2^63
    # that failed in every rank, a run written into a clip set (its catalog/ merged the set's)
    (("plan", "mlp", "--system", "h100-cluster:8", "--top", "101"), {}, _none,
     "--top: field 'top' = 101: expected from 1 to 100"),
    (("run", "--model", "mlp", "--plan", "dp=2", "--steps", "10000000001"), {}, _none,
     "--steps = 10000000001: expected 1 to 10,000,000 optimizer steps"),
    (("run", "--model", "mlp", "--plan", "dp=2", "--seed", str(2**63)), {}, _none,
     f"--seed = {2**63}: expected 0 <= seed < 2^63"),
    (("train", "occupancy", "--steps", "10000000001", "--out", "run"), {}, _none,
     "dojo train: field 'steps' = 10000000001: expected a number <= 1e+07"),
    (("train", "occupancy", "--out", "clips"), {}, _clips,
     "--out: field 'out' = 'clips': expected a run folder, not a clip set"),
    (("plan", "mlp", "--system", "h100-cluster:8", "--set", f"hidden={10**20}"), {}, _none,
     "a tensor would pass 2**63 bytes"),
    (("compare", "mlp", "--systems", "v1", "--batch", str(2**60)), {}, _none,
     f"--batch: field 'batch' = {2**60}: expected a whole number of samples from 1 to 2^53"),
    (("sweep", "mlp", "--system", "h100-cluster", "--devices", "8", "--batch", str(2**60)), {},
     _none, f"--batch: field 'batch' = {2**60}: expected a whole number of samples"),
    (("sweep", "mlp", "--system", "h100-cluster", "--devices", "8,1024", "--batch", str(2**53),
      "--weak"), {}, _none, "expected a batch that stays from 1 to 2^53 when weak scaling goes "
     "from 8 to 1024 devices"),
]


test_bad_inputs_are_refused_in_one_line = one_line_test(CASES)


@pytest.mark.parametrize(("text", "expected"), [
    # Python's own literals are the reference for what ASCII text means
    ("16", 16), ("-8", -8), ("+3", 3), (" 7 ", 7), ("1e3", 1e3), ("2.5", 2.5), (".5", 0.5),
    ("-1.5E-3", -1.5e-3), ("inf", math.inf), ("on", True), ("off", False),
    # not numbers: the text stays, and the field that wanted a number refuses it
    ("１６", "１６"), ("١٦", "١٦"), ("1_000", "1_000"), ("1_0.5", "1_0.5"), ("²", "²"),
    ("1e400", "1e400"), ("0x10", "0x10"), ("", ""),
])
def test_command_line_scalars_are_ascii_numbers(text: str, expected: object) -> None:
    from dojo.config import parse_scalar

    assert parse_scalar(text) == expected and type(parse_scalar(text)) is type(expected)


def test_a_catalog_folder_of_its_own_inside_the_set_is_accepted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The refusal of a catalog among the clip files leaves ROOT/NAME (the default is
    ROOT/catalog) alone: a catalog beside the clip folders is what `data synth` makes."""
    _clips(tmp_path)
    status, err, _ = run_inprocess(("data", "index", "clips", "--catalog", "clips/v2"),
                                   tmp_path, capsys)
    assert status == 0, err
    assert (tmp_path / "clips" / "v2" / "clips.parquet").is_file()
