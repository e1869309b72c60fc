"""`dojo simulate`, `dojo plan`, `dojo sweep`: documented JSON keys, errors with the arithmetic."""

from __future__ import annotations

import json

import pytest

from dojo.cli.main import main

SETS = ["--set", "layers=4", "--set", "hidden=128", "--set", "heads=4", "--set", "ffn=512",
        "--set", "vocab=1024", "--set", "seq=128"]


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:  # type: ignore[type-arg]
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_simulate_json_keys(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(capsys, "simulate", "gpt", *SETS, "--system", "a100-cluster:8",
                "--plan", "dp=2,tp=2,pp=2,mb=1", "--batch", "8", "--json")
    assert list(out) == ["step_time_s", "samples_per_s", "tokens_per_s", "model_flops",
                         "achieved_flops_per_device", "mfu", "breakdown_s",
                         "memory_bytes_per_device", "fits", "energy_j", "plan", "notes",
                         "devices", "idle_devices"]
    assert out["plan"] == ("dp=2,tp=2,pp=2,cp=1,mb=1,interleave=1,schedule=1f1b,recompute=none,"
                           "sp=off,zero=0,precision=bf16,overlap=on,fusion=full,tp_overlap=off,"
                           "grad_reduce=auto")
    assert out["notes"] == []  # mb was given
    assert list(out["breakdown_s"]) == ["compute", "exposed_comm", "bubble", "recompute",
                                        "optimizer", "data"]
    assert list(out["memory_bytes_per_device"]) == ["params", "grads", "optimizer_state",
                                                    "activations", "total", "capacity"]
    assert out["samples_per_s"] == pytest.approx(8 / out["step_time_s"])
    assert out["tokens_per_s"] == pytest.approx(8 * 128 / out["step_time_s"])
    assert out["mfu"] == pytest.approx(out["achieved_flops_per_device"] / 312e12)


def test_non_sequence_model_has_null_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(capsys, "simulate", "mlp", "--system", "a100-cluster:2", "--plan", "dp=2",
                "--batch", "8", "--json")
    assert out["tokens_per_s"] is None


def test_plan_json_keys(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(capsys, "plan", "gpt", *SETS, "--system", "a100-cluster:4", "--batch", "8",
                "--top", "3", "--json")
    assert list(out) == ["best", "candidates", "rejected"]
    assert list(out["best"]) == ["plan", "step_time_s", "mfu", "fits"]
    assert len(out["candidates"]) <= 3 and out["candidates"][0] == out["best"]


@pytest.mark.parametrize("argv", [
    ("plan", "mlp", "--system", "a100-cluster:2", "--batch", "8", "--top", "2"),
    ("simulate", "mlp", "--system", "a100-cluster:2", "--plan", "dp=2", "--batch", "8"),
    ("sweep", "mlp", "--system", "a100-cluster", "--devices", "1,2", "--batch", "8"),
])
def test_json_same_bytes_twice(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]) -> None:
    """Same inputs, same stdout bytes: no wall-clock field (plan's search time is on stderr)."""
    outs, errs = [], []
    for _ in range(2):
        assert main([*argv, "--json"]) == 0
        cap = capsys.readouterr()
        outs.append(cap.out)
        errs.append(cap.err)
    assert outs[0] == outs[1] and "search_s" not in outs[0]
    if argv[0] == "plan":
        assert " s" in errs[0] and "simulated" in errs[0]


@pytest.mark.parametrize(("plan", "needle"), [
    ("dp=3,tp=2,pp=2", "dp 3 x tp 2 x pp 2 = 12"),
    ("dp=1,tp=1,pp=8", "pp 8 x interleave 1 = 8 divides neither 4"),
    ("dp=8,mb=3", "batch 8 / (dp 8 x mb 3)"),
    ("dp=1,tp=8", "heads = 4"),
    ("dp=8,warp=9", "one of the keys"),
    ("dp=2,dp=8", "dp is given twice: dp=2 and dp=8"),
    ("dp=8,interleave=2", "1 with pp=1: virtual stages interleave pipeline stages"),
    ("dp=8,schedule=interleaved,interleave=2", "1 with pp=1"),
    ("dp=4,pp=2,interleave=2,schedule=1f1b,mb=2", "micro-batches (1) divisible by pp 2"),
])
def test_bad_plans_explain_the_arithmetic(capsys: pytest.CaptureFixture[str], plan: str,
                                          needle: str) -> None:
    code = main(["simulate", "gpt", *SETS, "--system", "a100-cluster:8", "--plan", plan,
                 "--batch", "8"])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1


def test_a_defaulted_micro_batch_is_said(capsys: pytest.CaptureFixture[str]) -> None:
    """`--plan dp=2` leaves mb out: the output names the mb it simulated and says how many
    one-sample micro-batches that makes (issue 14 item 2)."""
    out = _json(capsys, "simulate", "gpt", *SETS, "--system", "a100-cluster:2", "--plan", "dp=2",
                "--batch", "8", "--json")
    assert out["plan"].startswith("dp=2,tp=1,pp=1,cp=1,mb=1,")
    assert out["notes"] and "4 micro-batches of 1 sample" in out["notes"][0]
    assert main(["simulate", "gpt", *SETS, "--system", "a100-cluster:2", "--plan", "dp=2",
                 "--batch", "8"]) == 0
    assert "note           --plan gives no mb, so mb=1" in capsys.readouterr().out


def test_sweep_strong_scaling_efficiency(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(capsys, "sweep", "gpt", *SETS, "--system", "a100-cluster", "--devices", "1,2,4",
                "--batch", "16", "--json")
    points = out["points"]
    assert [p["devices"] for p in points] == [1, 2, 4]
    assert points[0]["efficiency"] == pytest.approx(1.0)
    assert all(0 < p["efficiency"] <= 1.0 + 1e-9 for p in points)


def test_auto_plan_reports_tokens_like_an_explicit_plan(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    out = _json(capsys, "simulate", "gpt", *SETS, "--system", "a100-cluster:2", "--plan", "auto",
                "--batch", "8", "--json")
    assert out["tokens_per_s"] == pytest.approx(8 * 128 / out["step_time_s"])
