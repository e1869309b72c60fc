"""The performance model against published, measured training runs (validation_cases.toml).

The expected values are measurements from the papers (Narayanan et al. SC'21 Table 1, Korthikanti
et al. 2022 Table 5); the test fails when the model drifts past the stated tolerance, the goal of
5 % mean and 10 % max absolute error of the step time.
"""

from __future__ import annotations

import pytest

from dojo.sim.validate import (
    GATE_CONFIDENCE,
    MAX_TOLERANCE,
    MEAN_TOLERANCE,
    load_cases,
    predict_case,
    summary,
    validate,
)


def test_cases_are_well_formed() -> None:
    cases = load_cases()
    assert len(cases) >= 20
    assert len({c.id for c in cases}) == len(cases)
    for c in cases:
        assert c.measured_step_s > 0 and c.gpus >= 8
        assert c.hardware in ("a100-cluster", "h100-cluster", "jean-zay-a100")
        assert c.fit or c.confidence != "high"   # a gated case is always fitted


def test_gated_cases_within_tolerance() -> None:
    cases = [c for c in load_cases() if c.confidence in GATE_CONFIDENCE]
    assert len(cases) >= 15
    stats = summary(validate(cases, predict_case))
    assert stats["mean_abs_error"] <= MEAN_TOLERANCE, stats
    assert stats["max_abs_error"] <= MAX_TOLERANCE, stats


def test_malformed_case_is_a_user_error() -> None:
    from dojo.errors import DojoError

    text = '[[case]]\nid = "x"\nsource = "s"\nhardware = "a100-cluster"\ngpus = 8\n' \
           'model = {}\nglobal_batch = 8\nplan = "dp=8"\nprecision = "bf16"\n' \
           'confidence = "high"\n'
    with pytest.raises(DojoError, match="no measured or derived step time"):
        load_cases(text)


def test_mosaic_step_times_match_their_published_mfu() -> None:
    """The MPT cases' step times, derived from the table's per-GPU model FLOP/s, agree with its
    MFU column through LLM Foundry's formula (MFU printed to 4 digits: 0.1 % tolerance)."""
    import tomllib
    from importlib import resources

    raw = tomllib.loads((resources.files("dojo.sim") / "validation_cases.toml")
                        .read_text("utf-8"))["case"]
    mosaic = [c for c in raw if c["id"].startswith("mosaic")]
    assert len(mosaic) == 10
    for c in mosaic:
        m, n = c["model"], int(c["params_published"])
        per_seq = 6 * n * m["seq"] + 12 * m["layers"] * m["hidden"] * m["seq"] ** 2
        step = per_seq * c["global_batch"] / (c["gpus"] * c["measured_mfu"]
                                              * c["peak_tflops"] * 1e12)
        assert step == pytest.approx(c["derived_step_time_s"], rel=1e-3), c["id"]


def test_fsdp_step_times_match_their_published_mfu() -> None:
    """The torchtitan cases' step times (local batch x seq / WPS) agree with the published MFU
    through torchtitan's formula (6 N + 12 L h s) x WPS / 312e12, N counted from the shape (the
    MFU is printed to 3 digits: 0.2 % tolerance)."""
    titan = [c for c in load_cases() if c.id.startswith("torchtitan")]
    assert len(titan) == 3
    published = {"torchtitan24-llama2-13b-a100-64": 0.611,
                 "torchtitan24-llama2-70b-a100-64": 0.505,
                 "torchtitan24-llama3-70b-a100-64": 0.517}
    for c in titan:
        m = c.model
        h, layers, s, kv = m["hidden"], m["layers"], m["seq"], m["kv_heads"]
        per_layer = 2 * h * h + 2 * h * (h * kv // m["heads"]) + 3 * h * m["ffn"] + 2 * h
        params = layers * per_layer + 2 * m["vocab"] * h + h
        tokens_per_gpu = c.global_batch * s / c.gpus
        wps = tokens_per_gpu / c.measured_step_s
        mfu = (6 * params + 12 * layers * h * s) * wps / 312e12
        assert mfu == pytest.approx(published[c.id], rel=2e-3), c.id


def test_moe_case_step_from_its_published_throughput() -> None:
    """The DeepSeek-V3 case: a zoo preset with its sequence, and a step time that is the table's
    tokens/s per GPU turned into seconds (8192 x 4096 / (1297 x 1024))."""
    from dojo.sim.validate import model_for

    case = next(c for c in load_cases() if c.id == "mbridge25-h100-deepseek-v3-fp8-ep64-1024")
    assert model_for(case) == ("deepseek-v3", {"seq": 4096})
    assert case.measured_step_s == pytest.approx(8192 * 4096 / (1297 * 1024), rel=1e-4)
    assert not case.fit and case.confidence == "low"


def test_leave_one_out_never_fits_a_held_out_case(monkeypatch: pytest.MonkeyPatch) -> None:
    """A `fit = false` case is predicted with the shipped calibration and enters no fit."""
    from dataclasses import replace

    from dojo.sim import calibrate
    from dojo.sim import validate as v

    case = replace(load_cases()[0], fit=False)

    def no_fit(*args: object, **kwargs: object) -> None:
        raise AssertionError("a held-out case reached a calibration fit")

    monkeypatch.setattr(calibrate, "prepare", no_fit)
    monkeypatch.setattr(v, "predict_case", lambda c: (1.5, 0.3))
    (out,) = v.leave_one_out([case])
    assert out.predicted_s == 1.5


def test_cases_that_do_not_fit_their_devices_are_flagged() -> None:
    """A case predicted to need more bytes than its device holds is listed by `not_fitting`
    (its recipe ran, so the simulator is wrong there); one without a memory figure (leave-one-
    out folds) is neither."""
    from dojo.sim.validate import not_fitting

    a, b, c = load_cases()[:3]
    sizes = {a.id: (1.0, 0.5, 81e9, 80e9), b.id: (1.0, 0.5, 79e9, 80e9), c.id: (1.0, 0.5)}
    out = validate([a, b, c], lambda case: sizes[case.id])
    assert [o.fits_memory for o in out] == [False, True, None]
    assert [o.case.id for o in not_fitting(out)] == [a.id]
