"""Overlap per kind: data-parallel gradient buckets with the backward, tensor-parallel
collectives with the GEMMs that depend on them, and the reduction's dtype.

Data parallel (`overlap=on`): as Megatron-LM's and torch DDP's bucketed reduction runs it, a
device's gradients are reduced bucket by bucket on a communication stream while the backward
goes on. A bucket is one block's parameters (and the embedding's, the head's, each its own); a
virtual stage's buckets become ready during the backward of its last micro-batch, the head's
first, the blocks' in reverse, the embedding's at its end, each at the point of that backward
proportional to the parameters done (`buckets`). The stream reduces them in the order they are
ready, one at a time (`fifo_end`): so the buckets of a virtual stage that finishes early are
reduced while the device runs the backwards of its other virtual stages, and once the
communication keeps up with the backward only the last bucket of the device's last virtual
stage is exposed. Every pipeline stage reduces its own gradients over its own data-parallel
group, so stages do not wait for each other.

Reduction dtype (`grad_reduce`): the bytes per gradient element on the wire and in the gradient
buffers: fp32 (4; Megatron-LM's default under bf16, Llama 3's reduce-scatter), bf16 (2), or the
precision policy's own (`auto`); `compiler.program.grad_bytes`.

Tensor parallel (`tp_overlap=on`, with `sp=on`): TransformerEngine's userbuffers split each
GEMM that produces a reduce-scatter's input or consumes an all-gather's output into tp pieces and
exchange piece i + 1 while computing piece i, so a collective of c seconds beside a GEMM of g
seconds exposes max(0, c - g (tp - 1) / tp) (the first or last piece has nothing to hide
behind). Each collective hides behind one GEMM of its phase; the simulator pairs the longest
collectives with the longest weight GEMMs of the chunk (exact when a phase's collectives are
equal in size and each GEMM hosts one, as in Megatron's forward: the all-gathers before QKV and
FC1, the reduce-scatters after the projection and FC2; in the backward it is the best pairing,
an upper bound on what is hidden: there TransformerEngine hides the all-gathers before the
projection's and FC2's input gradients by ring exchange, the re-gathers of QKV's and FC1's saved
input shards beside their input-gradient GEMMs and the reduce-scatters of those input gradients
beside the weight-gradient GEMMs by its bulk overlaps). The overlapped communication kernels
occupy SMs the GEMM then lacks: hiding h seconds costs h x sms / SMs (`overlap_sms_*` in the
calibration). All-reduces (norm statistics, tp without sp) are not overlapped. Without
`tp_overlap` every tp collective is charged whole, also the two that Megatron-LM issues
asynchronously beside a GEMM in a column-parallel linear's backward (the re-gather beside the
input gradient, the reduce-scatter beside the weight gradient): measured sp runs fit that
(docs/validation.md, "Sequence parallelism's re-gather").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from dojo.compiler.experts import bucket_groups
from dojo.compiler.program import Comm, Program, grad_bytes, tied_copy
from dojo.plan.policies import op_class
from dojo.sim.fp8 import gathered_weight_bytes

OVERLAPPED = ("all_gather", "reduce_scatter")

Bucket = tuple[float, float]  # (ready time s, seconds to reduce)


def fifo_end(buckets: Iterable[Bucket], start: float = 0.0) -> float:
    """When one communication stream that reduces `buckets` in the order given, each once it
    is ready and the stream is free, finishes (the stream is free from `start`)."""
    free = start
    for ready, seconds in buckets:
        free = max(free, ready) + seconds
    return free


def buckets(params: Sequence[float], start: float, end: float) -> list[tuple[float, float]]:
    """(ready time, parameters) of the buckets of one virtual stage whose last backward runs
    from `start` to `end`: `params` per bucket in the order the backward completes them, each
    ready when the backward has done its share of the parameters up to and including it."""
    total = sum(params) or 1.0
    done, out = 0.0, []
    for p in params:
        done += p
        out.append((start + (end - start) * done / total, p))
    return out


def chunk_buckets(program: Program, stage: int) -> list[tuple[int, list[float]]]:
    """(chunk index, whole parameters per bucket in backward order) of each virtual stage on
    device `stage`: the head's section first (last virtual stage), one bucket per block, the
    embedding's section last (first virtual stage); the head's holds its copy of a tied
    embedding (`program.tied_copy`)."""
    work, out = program.work, []
    last = program.plan.pp * program.plan.interleave - 1
    head = work.post.params + tied_copy(work, program.plan)
    for c in program.device_chunks(stage):
        sizes: list[float] = []
        if c.index == last and head:
            sizes.append(float(head))
        if work.block is not None:
            sizes += [float(work.block.params)] * c.blocks
        if c.index == 0 and work.pre.params:
            sizes.append(float(work.pre.params))
        if not sizes:
            sizes = [float(c.params)]
        out.append((c.index, sizes))
    return out


def bucket_time(program: Program, params: float,
                collective: Callable[[str, float, Any], float]) -> float:
    """Seconds to synchronise one bucket of `params` whole parameters (1/tp on this device):
    its gradients reduced (`Program.grad_sync_kind`: all-reduce without ZeRO or under the
    BF16_Optimizer, reduce-scatter under ZeRO) at `grad_bytes`, and under ZeRO the updated
    shard's weights gathered back."""
    plan = program.plan
    t = 0.0
    for local, levels in bucket_groups(program, params):   # with ep: experts over dp x cp / ep
        t += collective(program.grad_sync_kind, local * grad_bytes(plan), levels)
        if plan.zero >= 1 and levels:
            t += collective("all_gather", local * gathered_weight_bytes(plan), levels)
    return t


def dp_sync_end(program: Program, stage: int, spans: Sequence[Any],
                collective: Callable[[str, float, Any], float]) -> float:
    """When device `stage`'s bucketed gradient reduction ends (see the module docstring), from
    the pipeline's spans (each virtual stage's last backward)."""
    mine = [s for s in spans if s.stage == stage and s.kind == "B"]
    fallback = max(mine, key=lambda s: s.end)
    times: dict[float, float] = {}
    ready: list[Bucket] = []
    for chunk, sizes in chunk_buckets(program, stage):
        local = program.plan.pp
        own = [s for s in mine if s.chunk * local + stage == chunk]
        last = max(own, key=lambda s: s.end) if own else fallback
        for at, p in buckets(sizes, last.start, last.end):
            if p not in times:
                times[p] = bucket_time(program, p, collective)
            ready.append((at, times[p]))
    ready.sort(key=lambda b: b[0])
    return fifo_end(ready)


def last_bucket_time(program: Program, stage: int,
                     collective: Callable[[str, float, Any], float]) -> float:
    """Seconds of the bucket that becomes ready at the end of device `stage`'s backward (the
    last bucket of its first virtual stage): what `dp_sync_end` exposes at least."""
    first = min(chunk_buckets(program, stage), key=lambda cb: cb[0])
    return bucket_time(program, first[1][-1], collective)


def hidden_pairs(comms: Sequence[tuple[float, float]], gemms: Sequence[float], tp: int
                 ) -> float:
    """Exposed seconds of overlapped collectives `comms` = (seconds, fraction of the SMs their
    kernels hold) beside GEMMs of `gemms` seconds: the longest collectives paired with the
    longest GEMMs, each hiding min(c, g (tp - 1) / tp) and paying the hidden time x the SM
    fraction; collectives left without a GEMM are exposed whole."""
    hosts = sorted(gemms, reverse=True)
    exposed = 0.0
    for i, (c, sm) in enumerate(sorted(comms, reverse=True)):
        hide = min(c, hosts[i] * (tp - 1) / tp) if i < len(hosts) else 0.0
        exposed += c - hide + hide * sm
    return exposed


def sm_fractions(dev: Any) -> dict[str, float]:
    """Fraction of the device's SMs the overlapped all-gather and reduce-scatter kernels hold
    (the calibration's `overlap_sms_*` over its compute units)."""
    units = max(1, dev.compute_units)
    cal = dev.calibration
    return {"all_gather": cal.overlap_sms_all_gather / units,
            "reduce_scatter": cal.overlap_sms_reduce_scatter / units}


def tp_phase_time(program: Program, comms: Sequence[Comm], ops: Iterable[Any],
                  op_time: Callable[[Any], float], comm_time: Callable[[Comm], float],
                  sm_fraction: dict[str, float]) -> float:
    """Exposed seconds of one chunk phase's tp collectives `comms` beside its `ops`."""
    if not program.plan.tp_overlap or program.plan.tp == 1:
        return sum(n * comm_time(c) for c, n in Counter(comms).items())
    timed = {c: comm_time(c) for c in Counter(comms)}
    plain = sum(timed[c] for c in comms if c.kind not in OVERLAPPED)
    over = [(timed[c], sm_fraction.get(c.kind, 0.0)) for c in comms if c.kind in OVERLAPPED]
    ops = list(ops)
    host = {o: op_time(o) for o in Counter(ops)
            if o.kind == "matrix" and op_class(o.target) == "mm"}
    gemms = [host[o] for o in ops if o in host]
    return plain + hidden_pairs(over, gemms, program.plan.tp)
