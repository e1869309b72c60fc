"""`dojo calibrate`: the CSV's errors, the fit recovering known efficiencies, the written system
file, and leave-one-out on published cases (each fold blind to the run it predicts)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from dojo.cli.main import main
from dojo.errors import DojoError
from dojo.sim.calibrate import fit, leave_one_out, predict, prepare
from dojo.sim.runs import MAX_RUNS, Run, read_runs
from dojo.sim.validate import case_run, load_cases

SETS = "layers=4;hidden=1024;heads=8;ffn=4096;vocab=8192;seq=512"
OVERRIDES = {k: int(v) for k, v in (kv.split("=") for kv in SETS.split(";"))}
PLANS = ["dp=8,mb=4", "dp=2,tp=4,mb=4", "dp=16,mb=2", "tp=8,mb=8", "dp=4,tp=2,pp=2,mb=2"]


def _runs(stacks: tuple[str, ...] = ("",)) -> list[Run]:
    """Runs of a small GPT on 8 and 16 H100s: tensor-parallel and cross-node data-parallel
    traffic, and step times from ~10 ms to ~0.1 s, so every fitted parameter shows."""
    out = []
    for i, plan in enumerate(PLANS):
        for k, stack in enumerate(stacks):
            batch = 64 * (1 + (i + k) % 3)
            out.append(Run(model="gpt", plan=plan, batch=batch, seconds=1.0, stack=stack,
                           overrides=OVERRIDES,
                           label=f"run {plan} {stack}"))
    return out


def _measured(prepared: list, truth: dict[str, dict[str, float]]) -> list:
    """The runs as if measured on a machine whose calibration is `truth` (per stack)."""
    return [replace(p, run=replace(p.run, seconds=predict(p, truth[p.run.stack])))
            for p in prepared]


def test_fit_recovers_known_efficiencies() -> None:
    truth = {"matrix_efficiency": 0.55, "link_efficiency": 0.45, "step_overhead_s": 0.02}
    prepared = _measured(prepare(_runs(), "h100-cluster"), {"": truth})
    result = fit(prepared)
    for name, value in truth.items():
        assert result.values[name] == pytest.approx(value, rel=0.03), name
    assert max(abs(e) for e in result.residuals([p.run for p in prepared])) < 0.01
    # the start (the shipped h100 calibration) is far from the truth: the fit moved
    assert max(abs(s / p.run.seconds - 1) for s, p in zip(result.start_s, prepared)) > 0.2


def test_fit_carries_each_stack_efficiency() -> None:
    base = {"matrix_efficiency": 0.7, "link_efficiency": 0.8, "step_overhead_s": 0.0}
    eager = {**base, "matrix_efficiency": 0.42}
    prepared = _measured(prepare(_runs(("megatron-lm", "fsdp-eager", "megatron-lm")),
                                 "h100-cluster"), {"megatron-lm": base, "fsdp-eager": eager})
    result = fit(prepared)
    assert result.base_stack == "megatron-lm"  # the most common stack
    assert result.values["matrix_efficiency"] == pytest.approx(0.7, rel=0.03)
    assert result.stacks["fsdp-eager"]["matrix_efficiency"] == pytest.approx(0.42, rel=0.03)


def test_written_system_loads_and_reproduces_the_fit(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "measured.csv"
    csv.write_text("model,plan,batch,seconds,stack,overrides\n"
                   f'gpt,"dp=8,mb=4",64,0.05,megatron-lm,{SETS}\n'
                   f'gpt,"tp=8,mb=8",64,0.09,megatron-lm,{SETS}\n'
                   f'gpt,"dp=2,tp=4,mb=4",128,0.16,fsdp-eager,{SETS}\n')
    out = tmp_path / "mine.toml"
    assert main(["calibrate", "--system", "h100-cluster", "--runs", str(csv), "--out",
                 str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["measured_s"] for r in report["runs"]] == [0.05, 0.09, 0.16]
    for r in report["runs"]:
        assert r["residual"] == pytest.approx((r["predicted_s"] - r["measured_s"])
                                              / r["measured_s"])
    sets = [a for kv in SETS.split(";") for a in ("--set", kv)]
    assert main(["simulate", "gpt", *sets, "--system", str(out), "--devices", "8", "--plan",
                 "dp=2,tp=4,mb=4", "--batch", "128", "--stack", "fsdp-eager", "--json"]) == 0
    sim = json.loads(capsys.readouterr().out)
    assert sim["step_time_s"] == pytest.approx(report["runs"][2]["predicted_s"], rel=1e-9)
    assert main(["simulate", "gpt", *sets, "--system", str(out), "--devices", "8", "--plan",
                 "dp=2,tp=4,mb=4", "--batch", "128", "--stack", "deepspeed"]) == 2
    assert "--stack" in capsys.readouterr().err


@pytest.mark.parametrize("body, message", [
    ("model,plan,batch\n", "column 'seconds' is missing"),
    ("model,plan,batch,seconds,speed\n", "row 1, column 5 = 'speed'"),
    ('model,plan,batch,seconds\ngpt,"dp=8",64,fast\n', "row 2, column 'seconds' = 'fast'"),
    ('model,plan,batch,seconds\ngpt,"dp=8",64,-1\n', "row 2, column 'seconds' = '-1'"),
    ('model,plan,batch,seconds\ngpt,"dp=8",6.5,1\n', "row 2, column 'batch' = '6.5'"),
    ("model,plan,batch,seconds\ngpt,dp=8,tp=1,64,1\n", "row 2: 5 cells: expected 4"),
    ('model,plan,batch,seconds\nnope,"dp=8",64,1\n', "row 2, column 'model' = 'nope'"),
    ('model,plan,batch,seconds\ngpt,"dp=8,tq=2",64,1\n', "row 2, column 'plan'"),
    ('model,plan,batch,seconds,overrides\ngpt,"dp=8",64,1,layers\n',
     "row 2, column 'overrides' = 'layers'"),
    ("model,plan,batch,seconds\n", "no runs"),
])
def test_bad_csv_is_one_line_exit_2_nothing_written(tmp_path: Path, body: str, message: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "measured.csv"
    csv.write_text(body)
    out = tmp_path / "mine.toml"
    assert main(["calibrate", "--system", "h100-cluster:8", "--runs", str(csv), "--out",
                 str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(csv) in err and "\n" not in err
    assert not out.exists()


def test_run_count_is_bounded(tmp_path: Path) -> None:
    csv = tmp_path / "many.csv"
    csv.write_text("model,plan,batch,seconds\n" + 'gpt,"dp=8",64,1\n' * (MAX_RUNS + 1))
    with pytest.raises(DojoError, match=f"{MAX_RUNS + 1} runs: expected at most {MAX_RUNS}"):
        read_runs(csv)


def test_leave_one_out_never_sees_the_run_it_predicts() -> None:
    ids = ("narayanan21-t1-1.7b", "narayanan21-t1-3.6b", "narayanan21-t1-7.5b",
           "korthikanti22-t5-22b-sp-selective")
    cases = [c for c in load_cases() if c.id in ids]
    prepared = prepare([case_run(c) for c in cases], "a100-cluster")
    folds = leave_one_out(prepared)
    for p, held in zip(prepared, folds):
        assert held.run is p.run
        # the prediction is the simulator at the fold's calibration, and the error is its own
        assert held.predicted_s == pytest.approx(predict(p, held.fitted), rel=1e-12)
        assert held.error == pytest.approx((held.predicted_s - p.run.seconds) / p.run.seconds)
    # Doubling a run's measurement changes every other fold, never its own prediction.
    changed = [replace(p, run=replace(p.run, seconds=2 * p.run.seconds)) if i == 0 else p
               for i, p in enumerate(prepared)]
    again = leave_one_out(changed)
    assert again[0].predicted_s == pytest.approx(folds[0].predicted_s, rel=1e-12)
    assert all(a.predicted_s != pytest.approx(f.predicted_s, rel=1e-6)
               for a, f in zip(again[1:], folds[1:]))


def test_validate_reports_leave_one_out_error(capsys: pytest.CaptureFixture[str]) -> None:
    only = "narayanan21-t1-1.7b,narayanan21-t1-3.6b,korthikanti22-t5-22b-sp"
    main(["validate", "--only", only, "--leave-one-out", "--json"])
    out = json.loads(capsys.readouterr().out)
    errors = [abs(c["predicted_s"] - c["measured_s"]) / c["measured_s"] for c in out["cases"]]
    assert len(errors) == 3
    assert out["summary"]["mean_abs_error"] == pytest.approx(sum(errors) / 3)
    assert out["summary"]["max_abs_error"] == pytest.approx(max(errors))
