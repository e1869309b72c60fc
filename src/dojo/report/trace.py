"""A simulated step as a Chrome trace-event JSON file (opens in Perfetto UI, chrome://tracing).

Layout: one process per pipeline stage (the device that stands for all tensor- and data-parallel
ranks of that stage, as in the simulator), four threads (tracks) per process:

- compute: every F/B span of the `Result` as a complete event ("X"), named "F mb3 chunk1";
- tp-comm: the tensor-parallel collectives of that span. The simulator adds their time to the
  span's end (Megatron issues them inside the block, but their sum is what the timeline holds),
  so the event covers the last `tp` seconds of its compute span;
- dp-comm: the data-parallel gradient synchronisation (and the ZeRO all-gather);
- optimizer: the optimizer update.

With the data path (`data=`, a `dojo.sim.datapath.DataPath`), one more process, "data path
(hosts -> DIPs -> tiles)", holds the input of the next step, which loads while this one computes
(prefetch one step ahead): "host decode" (the hosts decoding the step's frames, from 0 to
`decode_s`) and "PCIe + TTP" (host -> DIP -> tile, streamed beside the decode, from 0 to
`transfer_s`, the slower hop). When loading takes longer than compute, each stage's compute
track gets "wait for input" from the end of the compute step to the end of the step, so the
trace ends at the step time the simulator reports (`Result.step_time_s`, data included).

Pipeline transfers are flow events ("s" -> "f", bound to the enclosing slices): F of virtual stage
v to F of v+1 for the same micro-batch, and B of v+1 to B of v. Transfers between chunks on the same
device are not transfers (the simulator charges none) and get no arrow.

Times are microseconds rounded to whole nanoseconds, so back-to-back events on a track meet
exactly instead of overlapping by a rounding error. Runs that would exceed `max_events` keep the
first K micro-batches (all stages, all chunks, all flows among them) and say so in `otherData`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dojo.errors import DojoError
from dojo.report.files import write_text_atomic
from dojo.sim.memory import device_memory
from dojo.sim.simulate import chunk_times, device_model

if TYPE_CHECKING:
    from dojo.compiler.program import Program
    from dojo.sim.datapath import DataPath
    from dojo.sim.pipeline import Span
    from dojo.sim.session import Simulated

MAX_EVENTS = 200_000
TRACKS = {"compute": 1, "tp-comm": 2, "dp-comm": 3, "optimizer": 4}
DATA_TRACKS = {"host decode": 1, "PCIe + TTP": 2}
_PHASE_ORDER = {"X": 0, "f": 1, "s": 2}
_FIXED_PER_STAGE = 2 + 2 * len(TRACKS) + 2   # process name/sort, thread names/sorts, sync, opt


@dataclass(frozen=True)
class TraceInfo:
    """What a trace holds: event count, spans written of the Result's total, micro-batches kept."""

    path: Path | None
    events: int
    spans_total: int
    spans_written: int
    microbatches_total: int
    microbatches_written: int

    @property
    def truncated(self) -> bool:
        return self.spans_written < self.spans_total


def stage_label(program: Program, stage: int) -> str:
    """'stage 3 (gpu 24-31)': ranks are tp innermost, then cp, dp, then pp (`compiler.mapping`)."""
    per = program.plan.tp * program.plan.dp_cp
    first = stage * per
    ranks = f"{first}-{first + per - 1}" if per > 1 else f"{first}"
    return f"stage {stage} ({program.device} {ranks})"


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _complete(name: str, cat: str, pid: int, track: str, start_ns: int, end_ns: int,
              args: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "cat": cat, "ph": "X", "pid": pid, "tid": TRACKS[track],
            "ts": start_ns / 1000, "dur": (end_ns - start_ns) / 1000, "args": args}


def _metadata(program: Program) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for stage in range(program.plan.pp):
        pid = stage + 1
        events += [
            {"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
             "args": {"name": stage_label(program, stage)}},
            {"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0,
             "args": {"sort_index": stage}},
        ]
        for track, tid in TRACKS.items():
            events += [
                {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                 "args": {"name": track}},
                {"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid,
                 "args": {"sort_index": tid}},
            ]
    return events


def tp_seconds(program: Program) -> dict[tuple[str, int], float]:
    """Tensor-parallel seconds per (kind, virtual stage), from the simulator's own chunk times."""
    if program.plan.tp == 1:
        return {}
    dev = device_model(program)
    memory = device_memory(program)
    out = {}
    for chunk in program.chunks:
        t = chunk_times(program, chunk, dev, memory)
        out[("F", chunk.index)] = t.tp_forward
        out[("B", chunk.index)] = t.tp_backward
    return out


def _span_events(program: Program, spans: list[Span]) -> list[dict[str, Any]]:
    pp = program.plan.pp
    tp = tp_seconds(program)
    events = []
    for s in spans:
        vs = s.chunk * pp + s.stage
        start, end = _ns(s.start), _ns(s.end)
        args = {"micro": s.micro, "chunk": s.chunk, "virtual_stage": vs}
        cat = "forward" if s.kind == "F" else "backward"
        name = f"{s.kind} mb{s.micro} chunk{s.chunk}"
        events.append(_complete(name, cat, s.stage + 1, "compute", start, end, args))
        comm = min(_ns(tp.get((s.kind, vs), 0.0)), end - start)
        if comm > 0:
            events.append(_complete(f"TP {name}", "tp-comm", s.stage + 1, "tp-comm",
                                    end - comm, end, args))
    return events


def _flow_events(program: Program, spans: list[Span]) -> list[dict[str, Any]]:
    """One "s"/"f" pair per pipeline transfer between different devices."""
    pp = program.plan.pp
    by_key = {(s.kind, s.micro, s.chunk * pp + s.stage): s for s in spans}
    events: list[dict[str, Any]] = []
    flow_id = 0
    for (kind, micro, vs), src in sorted(by_key.items()):
        nxt = vs + 1 if kind == "F" else vs - 1
        dst = by_key.get((kind, micro, nxt))
        if dst is None or dst.stage == src.stage:
            continue
        flow_id += 1
        start, end = _ns(src.start), _ns(src.end)
        common = {"name": f"{kind} mb{micro} v{vs}->v{nxt}", "cat": "p2p", "id": flow_id}
        # "s" sits just inside the producer's end so it binds to that slice, "f" at the
        # consumer's start with bp "e" so it binds to the slice that starts there.
        events.append({**common, "ph": "s", "pid": src.stage + 1, "tid": TRACKS["compute"],
                       "ts": (end - min(1, end - start)) / 1000,
                       "args": {"bytes": program.p2p.nbytes}})
        events.append({**common, "ph": "f", "bp": "e", "pid": dst.stage + 1,
                       "tid": TRACKS["compute"], "ts": _ns(dst.start) / 1000})
    return events


def _step_events(simulated: Simulated) -> list[dict[str, Any]]:
    program, result = simulated.program, simulated.result
    kind = program.grad_sync_kind + (" + all_gather" if program.plan.zero >= 1 else "")
    events = []
    ends = (0, program.plan.pp - 1) if program.tied is not None else ()
    for stage, start, end in result.sync_spans:
        # a data-parallel group of one synchronises nothing, unless it ends a tied embedding
        tied = " + tied embedding all_reduce" if stage in ends else ""
        if _ns(end) > _ns(start):
            events.append(_complete(f"grad sync ({kind}{tied})", "dp-comm", stage + 1,
                                    "dp-comm", _ns(start), _ns(end), {"stage": stage}))
    for stage, start, end in result.optimizer_spans:
        events.append(_complete("optimizer", "optimizer", stage + 1, "optimizer",
                                _ns(start), _ns(end), {"stage": stage}))
    return events


def _micro_budget(program: Program, max_events: int) -> int:
    """How many micro-batches fit in `max_events` (at least one)."""
    pp = program.plan.pp
    virtual = pp * program.plan.interleave
    per_micro = 2 * virtual * (2 if program.plan.tp > 1 else 1) + 4 * (virtual - 1)
    room = max_events - _FIXED_PER_STAGE * pp
    return max(1, min(program.microbatches, room // per_micro))


def _data_events(simulated: Simulated, data: DataPath) -> list[dict[str, Any]]:
    """The data-path process (module docstring): metadata, its two tracks, and the wait."""
    program, result = simulated.program, simulated.result
    pid = program.plan.pp + 1
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
         "args": {"name": "data path (hosts -> DIPs -> tiles)"}},
        {"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0,
         "args": {"sort_index": pid}}]
    for track, tid in DATA_TRACKS.items():
        events += [{"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                    "args": {"name": track}},
                   {"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid,
                    "args": {"sort_index": tid}}]
    sizing = {"hosts_needed": data.hosts_needed, "ingest_hosts_needed": data.ingest_hosts_needed}
    for name, track, seconds in (("decode next step's frames", "host decode", data.decode_s),
                                 ("host -> DIP -> tile", "PCIe + TTP", data.transfer_s)):
        if _ns(seconds) > 0:
            events.append({"name": name, "cat": "data", "ph": "X", "pid": pid,
                           "tid": DATA_TRACKS[track], "ts": 0.0, "dur": _ns(seconds) / 1000,
                           "args": {"seconds": seconds, **sizing}})
    end = _ns(result.step_time_s)
    start = end - _ns(data.exposed_s)
    if end > start:
        for stage in range(program.plan.pp):
            events.append(_complete("wait for input", "data", stage + 1, "compute", start, end,
                                    {"exposed_s": data.exposed_s}))
    return events


def trace_events(simulated: Simulated, max_events: int = MAX_EVENTS,
                 data: DataPath | None = None) -> tuple[dict[str, Any], TraceInfo]:
    """The trace as a JSON-ready object and what it holds; no I/O. With `data`, the data
    path's process and the input wait (module docstring)."""
    if max_events < 1:
        raise DojoError(f"max_events = {max_events}: expected a positive event count")
    program, result = simulated.program, simulated.result
    keep = _micro_budget(program, max_events)
    spans = sorted((s for s in result.spans if s.micro < keep),
                   key=lambda s: (s.stage, s.start, s.end))
    extra = _data_events(simulated, data) if data is not None else []
    body = _span_events(program, spans) + _step_events(simulated) + _flow_events(program, spans)
    body += [e for e in extra if e["ph"] != "M"]
    # At equal times a slice comes before the flow ends bound to it.
    body.sort(key=lambda e: (e["pid"], e["tid"], e["ts"], _PHASE_ORDER[e["ph"]]))
    events = _metadata(program) + [e for e in extra if e["ph"] == "M"] + body
    info = TraceInfo(path=None, events=len(events), spans_total=len(result.spans),
                     spans_written=len(spans), microbatches_total=program.microbatches,
                     microbatches_written=keep)
    note = ("tp-comm events cover the tensor-parallel time the simulator adds to the end of "
            "each span; one device per stage stands for its tp and dp ranks")
    if data is not None:
        note += ("; the data path loads the next step's input while this one computes, and "
                 "compute waits for what it does not hide")
    other: dict[str, Any] = {
        "model": simulated.graph.name, "system": program.system.name, "plan": program.plan.text(),
        "batch": program.batch, "step_time_s": result.step_time_s,
        "microbatches": program.microbatches, "microbatches_shown": keep, "note": note,
    }
    if data is not None:
        other["data_path"] = data.to_json()
    if info.truncated:
        other["truncated"] = (f"only micro-batches 0-{keep - 1} of {program.microbatches} are "
                              f"shown, to stay under {max_events} events")
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}, info


def write_trace(simulated: Simulated, path: str | Path, max_events: int = MAX_EVENTS,
                data: DataPath | None = None) -> TraceInfo:
    """Write the Chrome/Perfetto trace of `simulated` (with its data path, if given) to `path`
    atomically (compact JSON)."""
    trace, info = trace_events(simulated, max_events, data)
    target = write_text_atomic(path, json.dumps(trace, separators=(",", ":")))
    return TraceInfo(path=target, events=info.events, spans_total=info.spans_total,
                     spans_written=info.spans_written,
                     microbatches_total=info.microbatches_total,
                     microbatches_written=info.microbatches_written)
