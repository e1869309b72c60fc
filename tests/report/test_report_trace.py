"""Chrome/Perfetto traces of simulated steps: format, counts from closed forms, flows, tracks."""

from __future__ import annotations

import itertools
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from dojo.errors import DojoError
from dojo.report import write_trace
from dojo.report.trace import TRACKS, trace_events
from dojo.sim.session import Simulated

# Keys the trace-event format requires per phase (Chrome "Trace Event Format" document).
REQUIRED = {
    "X": {"name", "ph", "ts", "dur", "pid", "tid"},
    "M": {"name", "ph", "pid", "args"},
    "s": {"name", "cat", "ph", "id", "ts", "pid", "tid"},
    "f": {"name", "cat", "ph", "id", "ts", "pid", "tid"},
}


def _load(sim: Simulated, tmp_path: Path, **kw: Any) -> list[dict[str, Any]]:
    path = tmp_path / "step.trace.json"
    info = write_trace(sim, path, **kw)
    assert info.path == path
    doc = json.loads(path.read_text())
    assert set(doc) >= {"traceEvents", "displayTimeUnit"}
    assert info.events == len(doc["traceEvents"])
    return doc["traceEvents"]


def _slices(events: list[dict[str, Any]], track: str) -> list[dict[str, Any]]:
    return [e for e in events if e["ph"] == "X" and e["tid"] == TRACKS[track]]


@pytest.mark.parametrize("which", ["interleaved", "deep"])
def test_every_event_has_the_keys_of_its_phase(which: str, request: pytest.FixtureRequest,
                                               tmp_path: Path) -> None:
    events = _load(request.getfixturevalue(which), tmp_path)
    for e in events:
        assert e["ph"] in REQUIRED, e
        assert REQUIRED[e["ph"]] <= set(e), e
        if e["ph"] != "M":
            assert e["ts"] >= 0
        if e["ph"] == "X":
            assert e["dur"] >= 0
        if e["ph"] == "f":
            assert e["bp"] == "e"  # bound to the slice that starts at the flow's end


@pytest.mark.parametrize("which", ["interleaved", "deep"])
def test_span_counts_follow_the_schedule(which: str, request: pytest.FixtureRequest,
                                         tmp_path: Path) -> None:
    sim = request.getfixturevalue(which)
    plan, micro = sim.program.plan, sim.program.microbatches
    events = _load(sim, tmp_path)
    compute = _slices(events, "compute")
    # Every device runs F and B of each of its chunks for every micro-batch.
    assert len(compute) == 2 * plan.pp * plan.interleave * micro == len(sim.result.spans)
    for stage in range(plan.pp):
        mine = [e for e in compute if e["pid"] == stage + 1]
        assert len(mine) == 2 * plan.interleave * micro
        for kind in "FB":
            names = {e["name"] for e in mine if e["name"].startswith(kind)}
            assert names == {f"{kind} mb{m} chunk{c}" for m in range(micro)
                             for c in range(plan.interleave)}
    # Tensor-parallel traffic is drawn per span exactly when there is a tensor-parallel group.
    assert len(_slices(events, "tp-comm")) == (len(compute) if plan.tp > 1 else 0)
    # One gradient sync (dp > 1 in both fixtures) and one optimizer update per stage.
    assert sorted(e["pid"] for e in _slices(events, "dp-comm")) == list(range(1, plan.pp + 1))
    assert sorted(e["pid"] for e in _slices(events, "optimizer")) == list(range(1, plan.pp + 1))


def test_slice_times_are_the_result_spans_in_microseconds(interleaved: Simulated,
                                                          tmp_path: Path) -> None:
    events = _load(interleaved, tmp_path)
    by_name = {(e["pid"], e["name"]): e for e in _slices(events, "compute")}
    for s in interleaved.result.spans:
        e = by_name[(s.stage + 1, f"{s.kind} mb{s.micro} chunk{s.chunk}")]
        assert e["ts"] == pytest.approx(s.start * 1e6, abs=1e-3)      # ns rounding
        assert e["dur"] == pytest.approx((s.end - s.start) * 1e6, abs=2e-3)
    step_us = interleaved.result.step_time_s * 1e6
    assert max(e["ts"] + e["dur"] for e in events if e["ph"] == "X") == pytest.approx(step_us,
                                                                                    abs=1e-3)


@pytest.mark.parametrize("which", ["interleaved", "deep"])
def test_events_on_one_track_do_not_overlap(which: str, request: pytest.FixtureRequest,
                                            tmp_path: Path) -> None:
    events = _load(request.getfixturevalue(which), tmp_path)
    tracks: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    for e in events:
        if e["ph"] == "X":
            tracks[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"]))
    assert tracks
    for spans in tracks.values():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end - 1e-9


def test_tp_comm_lies_inside_its_compute_span(interleaved: Simulated, tmp_path: Path) -> None:
    events = _load(interleaved, tmp_path)
    compute = {(e["pid"], e["name"]): e for e in _slices(events, "compute")}
    for e in _slices(events, "tp-comm"):
        c = compute[(e["pid"], e["name"].removeprefix("TP "))]
        assert c["ts"] <= e["ts"] and e["ts"] + e["dur"] == pytest.approx(c["ts"] + c["dur"])
        assert 0 < e["dur"] <= c["dur"]


@pytest.mark.parametrize("which", ["interleaved", "deep"])
def test_flows_pair_up_and_bind_to_adjacent_virtual_stages(
        which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    sim = request.getfixturevalue(which)
    plan, micro = sim.program.plan, sim.program.microbatches
    virtual = plan.pp * plan.interleave
    events = _load(sim, tmp_path)
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    ends = {e["id"]: e for e in events if e["ph"] == "f"}
    assert len(starts) == len([e for e in events if e["ph"] == "s"])  # ids unique
    assert starts.keys() == ends.keys()
    # pp > 1: every hop between adjacent virtual stages changes device, forward and backward.
    assert len(starts) == 2 * (virtual - 1) * micro
    compute = _slices(events, "compute")

    def enclosing(e: dict[str, Any]) -> dict[str, Any]:
        hits = [c for c in compute if c["pid"] == e["pid"]
                and c["ts"] <= e["ts"] <= c["ts"] + c["dur"]]
        assert len(hits) >= 1, e
        return max(hits, key=lambda c: c["ts"])   # the later slice at a shared boundary

    for fid, s in starts.items():
        f = ends[fid]
        assert (s["name"], s["cat"]) == (f["name"], f["cat"])
        src, dst = enclosing(s), enclosing(f)
        assert f["ts"] == dst["ts"]             # arrives as the consumer starts
        assert f["ts"] >= s["ts"]               # causality
        v_src, v_dst = src["args"]["virtual_stage"], dst["args"]["virtual_stage"]
        assert src["name"][0] == dst["name"][0] and src["args"]["micro"] == dst["args"]["micro"]
        assert v_dst == (v_src + 1 if src["name"][0] == "F" else v_src - 1)
        assert (v_src % plan.pp) + 1 == s["pid"] and (v_dst % plan.pp) + 1 == f["pid"]


def test_processes_and_threads_are_named(interleaved: Simulated, tmp_path: Path) -> None:
    events = _load(interleaved, tmp_path)
    procs = {e["pid"]: e["args"]["name"] for e in events
             if e["ph"] == "M" and e["name"] == "process_name"}
    # Ranks: tp innermost, then dp (2 x 2 = 4 GPUs per stage), then pp.
    assert procs == {1: "stage 0 (gpu 0-3)", 2: "stage 1 (gpu 4-7)"}
    threads = {(e["pid"], e["args"]["name"]) for e in events
               if e["ph"] == "M" and e["name"] == "thread_name"}
    assert threads == {(p, t) for p in (1, 2) for t in ("compute", "tp-comm", "dp-comm",
                                                         "optimizer")}


def test_large_runs_are_capped_by_micro_batch(deep: Simulated, tmp_path: Path) -> None:
    plan = deep.program.plan
    cap = 100
    events = _load(deep, tmp_path, max_events=cap)
    _, info = trace_events(deep, max_events=cap)
    assert info.truncated and len(events) <= cap
    kept = info.microbatches_written
    assert 1 <= kept < deep.program.microbatches
    assert len(_slices(events, "compute")) == 2 * plan.pp * kept == info.spans_written
    starts = {e["id"] for e in events if e["ph"] == "s"}
    assert starts == {e["id"] for e in events if e["ph"] == "f"}
    doc = json.loads((tmp_path / "step.trace.json").read_text())
    assert "truncated" in doc["otherData"]


def test_write_is_atomic(interleaved: Simulated, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.json"
    path.write_text("previous")

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(DojoError, match="disk full"):  # one line naming the cause
        write_trace(interleaved, path)
    assert path.read_text() == "previous"           # the old file is intact
    assert os.listdir(tmp_path) == ["t.json"]        # and no temporary file is left
    monkeypatch.undo()
    write_trace(interleaved, path)
    assert json.loads(path.read_text())["traceEvents"]
    assert os.listdir(tmp_path) == ["t.json"]


def test_missing_folder_is_a_one_line_user_error(interleaved: Simulated, tmp_path: Path) -> None:
    with pytest.raises(DojoError, match="does not exist"):
        write_trace(interleaved, tmp_path / "no" / "such" / "t.json")


def _end_s(events: list[dict[str, Any]]) -> float:
    """Where the trace ends: the latest end of a complete event, in seconds."""
    return max(e["ts"] + e["dur"] for e in events if e["ph"] == "X") / 1e6


@pytest.mark.parametrize("which", ["interleaved", "deep"])
def test_trace_ends_at_the_step_time(which: str, request: pytest.FixtureRequest,
                                     tmp_path: Path) -> None:
    sim = request.getfixturevalue(which)
    assert _end_s(_load(sim, tmp_path)) == pytest.approx(sim.result.step_time_s, rel=1e-6)


@pytest.mark.parametrize("decode_s, transfer_s", [(0.9, 0.2), (0.0001, 0.00005)])
def test_data_path_in_the_trace_ends_it_at_the_step_with_data(
        decode_s: float, transfer_s: float, interleaved: Simulated, tmp_path: Path) -> None:
    """Issue 14 item 10: a step that waits for its input must not end at its compute. The
    data path's figures are given by hand; the step with data is compute + what input exposes
    (input of the next step loads during this one: exposed = max(0, data - compute))."""
    from dojo.sim.datapath import DataPath, with_data

    compute = interleaved.result.step_time_s
    data_s = max(decode_s, transfer_s)
    exposed = max(0.0, data_s - compute)
    path = DataPath(decode_s=decode_s, transfer_s=transfer_s, data_s=data_s, exposed_s=exposed,
                    hosts_needed=9, ingest_hosts_needed=3, bottleneck=exposed > 0)
    fed = Simulated(program=interleaved.program, result=with_data(interleaved.result, path),
                    graph=interleaved.graph)
    events = _load(fed, tmp_path, data=path)
    assert _end_s(events) == pytest.approx(compute + exposed, rel=1e-6)
    assert _end_s(events) == pytest.approx(fed.result.step_time_s, rel=1e-6)
    data = [e for e in events if e["ph"] == "X" and e.get("cat") == "data"]
    names = {e["name"]: e for e in data}
    assert names["decode next step's frames"]["dur"] == pytest.approx(decode_s * 1e6, abs=1e-3)
    assert names["host -> DIP -> tile"]["dur"] == pytest.approx(transfer_s * 1e6, abs=1e-3)
    waits = [e for e in data if e["name"] == "wait for input"]
    assert len(waits) == (interleaved.program.plan.pp if exposed > 0 else 0)
    assert all(e["dur"] == pytest.approx(exposed * 1e6, abs=1e-3) for e in waits)
