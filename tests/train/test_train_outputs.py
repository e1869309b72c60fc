"""A tiny `dojo train` run writes report.html (with figures), trace.json and metrics.json."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from dojo.cli.main import main
from dojo.train import TrainResult

SIM_KEYS = {"system", "plan", "step_time_s", "samples_per_s", "energy_j"}


def test_metrics_json_has_exactly_the_documented_keys(tiny_run: TrainResult) -> None:
    m = json.loads(tiny_run.files["metrics"].read_text())
    assert set(m) == {"train_loss", "val_iou", "baseline_iou", "steps", "simulated", "data_path",
                      "dataset", "slices", "rounds"}
    assert m["rounds"] == []  # one round: nothing mined
    assert set(m["simulated"]) == SIM_KEYS
    assert set(m["data_path"]) == {"decode_fps_per_core", "decode_fps_large", "decode_rates",
                                   "hosts_needed"}
    assert m["data_path"]["decode_rates"] == "recorded"
    assert m["steps"] == 4 and len(m["train_loss"]) == 4
    assert all(isinstance(x, float) and x > 0 for x in m["train_loss"])
    assert 0.0 <= m["val_iou"] <= 1.0 and 0.0 <= m["baseline_iou"] <= 1.0
    assert m["simulated"]["system"] == "v1" and "precision=fp32" in m["simulated"]["plan"]
    assert m["data_path"]["decode_fps_per_core"] > 0 and m["data_path"]["hosts_needed"] >= 1


def test_metrics_agree_with_the_simulated_step(tiny_run: TrainResult) -> None:
    m = json.loads(tiny_run.files["metrics"].read_text())["simulated"]
    r = tiny_run.sim.dojo.result
    batch = tiny_run.sim.dojo.program.batch
    # Throughput is the global batch over the step time (data loading included).
    assert m["samples_per_s"] == pytest.approx(batch / m["step_time_s"], rel=1e-9)
    assert m["step_time_s"] == pytest.approx(sum(r.breakdown_s.values()), rel=1e-6)


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.headings: list[str] = []
        self._in_heading = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")
        self._in_heading = tag in ("h1", "h2")

    def handle_data(self, data: str) -> None:
        if self._in_heading:
            self.headings.append(data)
            self._in_heading = False


def test_report_html_parses_and_has_its_figures(tiny_run: TrainResult) -> None:
    parser = _Collect()
    parser.feed(tiny_run.files["report"].read_text(encoding="utf-8"))
    parser.close()
    # loss, IoU, BEV examples, timeline, tile map, link map, breakdown
    assert len(parser.images) >= 7
    assert all(src.startswith("data:image/png;base64,") for src in parser.images)
    text = " ".join(parser.headings)
    for part in ("Training", "Held-out", "Simulated on Dojo", "Utilisation", "Data path",
                 "GPU cluster"):
        assert part in text


def test_trace_is_valid_json_and_bev_is_a_png(tiny_run: TrainResult) -> None:
    trace = json.loads(tiny_run.files["trace"].read_text())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    assert events and all("ph" in e for e in events)
    assert tiny_run.files["bev"].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize("argv, flag", [
    (["train", "gpt2-small"], "model"),
    (["train", "occupancy", "--steps", "many"], "--steps"),
    (["train", "occupancy", "--steps", "0"], "steps"),
    (["train", "occupancy", "--precision", "fp64"], "precision"),
])
def test_bad_arguments_exit_2_with_one_line(argv: list[str], flag: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dojo: error:") and flag in err and "\n" not in err


def test_same_options_give_the_same_metrics_json_bytes(tiny_run: TrainResult, tiny_data: Path,
                                                       tmp_path: Path) -> None:
    """metrics.json is a pure function of the options and the data (issue 14 item 3): a second
    run in another folder writes the same bytes. Decode rates come from the recorded file, and
    nothing measured (wall clock, live decode, paths) is in the file."""
    from dojo.train import train_occupancy

    from .conftest import tiny_options

    again = train_occupancy(tiny_options(tmp_path / "again", tiny_data))
    first = tiny_run.files["metrics"].read_bytes()
    assert again.files["metrics"].read_bytes() == first
    assert str(tmp_path).encode() not in first and str(tiny_data).encode() not in first


def test_trace_ends_at_the_reported_step_time(tiny_run: TrainResult) -> None:
    """Issue 14 item 10: the trace holds the data path, so it lasts the step metrics.json
    reports (data loading included), not only its compute."""
    events = json.loads(tiny_run.files["trace"].read_text())["traceEvents"]
    end_s = max(e["ts"] + e["dur"] for e in events if e["ph"] == "X") / 1e6
    step = json.loads(tiny_run.files["metrics"].read_text())["simulated"]["step_time_s"]
    assert end_s == pytest.approx(step, rel=1e-6)
    data = tiny_run.sim.data
    if data.exposed_s > 0:  # the step waits for input: the data track is what ends it
        assert any(e.get("name") == "wait for input" for e in events)
        assert step == pytest.approx(tiny_run.sim.dojo_compute.result.step_time_s
                                     + data.exposed_s, rel=1e-9)
