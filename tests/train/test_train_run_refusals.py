"""`dojo eval` and `dojo data mine` on a real (tiny) run given bad values or a damaged run:
one line, exit 2, and the run folder unchanged (the fuzz table's base line is not a run, so its
cases stop earlier)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dojo.cli.main import main
from dojo.train import TrainResult


def _files(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*")
                  if p.is_file())


@pytest.fixture
def run_copy(tiny_run: TrainResult, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(tiny_run.options.out, out)
    return out


@pytest.mark.parametrize(("argv", "words"), [
    (["data", "mine", "RUN", "--slice", "nope", "--budget", "2"], "--slice"),
    (["data", "mine", "RUN", "--slice", "x", "--budget", "2", "--slices", "bad.toml"],
     "bad.toml"),
    (["data", "mine", "RUN", "--slice", "scenario_urban", "--budget", "2", "--pool", "nosuch"],
     "nosuch"),
    (["eval", "RUN", "--slices", "bad.toml"], "bad.toml"),
    (["eval", "RUN", "--slices", "badwhere.toml"], "where"),
    (["data", "mine", "NOMETRICS", "--slice", "x", "--budget", "2"], "metrics.json"),
])
def test_bad_values_on_a_real_run(argv: list[str], words: str, run_copy: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.toml").write_text("[slices.x\n")
    (tmp_path / "badwhere.toml").write_text('[slices.x]\nwhere = "no_such_column > 1"\n')
    nometrics = tmp_path / "nometrics"
    shutil.copytree(run_copy, nometrics)
    (nometrics / "metrics.json").unlink()
    names = {"RUN": str(run_copy), "NOMETRICS": str(nometrics)}
    argv = [names.get(a, str(tmp_path / a) if a.endswith(".toml") else a) for a in argv]
    before = _files(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dojo: error: ") and err.count("\n") == 1 and words in err, err
    assert _files(tmp_path) == before
