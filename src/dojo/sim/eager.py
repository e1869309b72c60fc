"""What an eager step costs outside its captured ops, per pipeline stage (the `cpu` device).

`DeviceModel.host_step_time(tensors, microbatches)` prices the host work of an eager step that
no captured op holds: the optimizer step's fixed part, its part per parameter tensor with
`zero_grad`, and one accumulation add per tensor per extra micro-batch. Its tensor count is one
device's: `stage_param_tensors` lays the sections' counts (`dojo.capture.params`) over the
program's chunks as `compiler.program` lays their parameters.

`sync_host_time` prices what the runtime's synchronisation costs the host beyond the
collectives' transfer (`dojo.runtime.trainer`): with dp > 1 the gradients are packed into one
flat buffer (a reshape and a copy per tensor), scaled after the all-reduce and unpacked (a
slice, a view and a copy per tensor); with more than one rank the step's loss is all-reduced
(one FP32 element over the world, 2 (n - 1) message steps of a ring).

With more than one rank the eager runtime's stepping thread also pays for its collectives
beyond their transfer (`tp_host_time`, `p2p_host_time`, and the sync's two collectives in
`sync_host_time`): every blocking wait on another rank costs the work after it
`wait_resume_s` (the thread sleeps, other threads run on its core, it resumes with cold
caches), a tensor-parallel all-reduce its f/g autograd functions and clone (`tp_region_s`),
and a pipeline send its posting (`p2p_post_s`); bench/rank_costs.py measures them. The
vocabulary-parallel embedding and cross entropy cost their own measured host time
(`vocab_host`) in place of the regions of their collectives.

Where the calibration measured two ranks in lockstep (`lockstep_*`, `wait_time`), a blocking
wait costs the step's wall more beside that slower resume: a fixed part (the message handed from
thread to thread, each waking up), after any work the wake-up of the rank that arrived first
and slept, and the wait for the later rank, whose arrival drifts from the earlier's as their
work's jitter accumulates, as sqrt(work) since its previous wait (measured: docs/benchmarks.md,
fourteenth, fifteenth and twentieth rounds; since the runtime runs gloo's
loop threads at SCHED_IDLE where its ranks fill the cores, `dojo.runtime.gloothreads`, the two
stepping threads run side by side).

`in_cache` decides where an eager step's ops find their operands. A parameter is read once in
a micro-batch's forward and once in its backward, so between two reads of it the pass streams
all its other ops' bytes: where that exceeds the measured cache (`cache_bytes`), each op reads
its weights, its saved activations and its freshly allocated outputs from memory. Measured on a
2-core Xeon VM with a 2 MiB L2 (bench/op_context.py): an op's first run in a replay of a whole
step against its immediate repeat costs 55-93 ns more per KiB of operands, the memory bandwidth
the calibration measures (15 GB/s), not the cache's (143 GB/s). Not modelled: the code's share
of the cache (the dispatch stacks taking turns step by step dispatch 25-69 % slower forward and
10-36 % backward than each stack run over and over, `op_context.py --stacks`; charging that
where a pass outgrows the cache read resnet50, deepseek-v3 and gpt at hidden 128 14-30 % high,
docs/benchmarks.md, fifteenth round).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sized
from dataclasses import replace

from dojo.compiler.program import Program
from dojo.sim.costs import DeviceModel

# Bytes the flat gradient sync streams per FP32 gradient element: the packing copy (read and
# write), the in-place scale after the all-reduce, the unpacking copy.
SYNC_BYTES_PER_PARAM = 3 * 2 * 4


def pass_bytes(program: Program) -> float:
    """Bytes one micro-batch's forward and backward of the busiest chunk stream (the sum over
    its ops of bytes read and written on one device): the reuse distance of its parameters."""
    return max((sum(o.bytes for o in c.forward + c.backward) for c in program.chunks),
               default=0.0)


def in_cache(program: Program, dev: DeviceModel) -> DeviceModel:
    """`dev` as `program`'s ops find it: `cold` where it is eager, has a measured cache and
    the program's pass (`pass_bytes`) does not fit it; else `dev` unchanged."""
    cal = dev.calibration
    if not (cal.eager and cal.cache_bytes) or pass_bytes(program) <= cal.cache_bytes:
        return dev
    return replace(dev, cold=True)


def code_keys(program: Program) -> int:
    """Distinct call sites (`dojo.compiler.code.section_keys`) the busiest device runs in one
    step: the code that passes between two runs of one of them."""
    work, last = program.work, len(program.chunks) - 1
    busiest = 0
    for stage in range(program.plan.pp):
        keys: set[str] = set()
        for chunk in program.device_chunks(stage):
            if chunk.index == 0:
                keys |= work.pre.code
            if chunk.blocks and work.block is not None:
                keys |= work.block.code
            if chunk.index == last:
                keys |= work.post.code
        busiest = max(busiest, len(keys))
    return busiest


def code_in_cache(program: Program, dev: DeviceModel) -> DeviceModel:
    """`dev` with `code_cold`, the share of the cold call sites' `cold_*` figures its passes pay
    (`dojo.compiler.code`): 0 up to `code_keys_hot` call sites a step (its code stays in the
    caches between passes), 1 from `code_keys_cold`, linear in between; `dev` unchanged where
    it is not eager or has no cold figures."""
    cal = dev.calibration
    if not cal.eager or not (cal.cold_call_s or cal.cold_pointwise_s or cal.cold_matrix_s
                             or cal.cold_library_s or cal.cold_eltwise_s or cal.cold_region_s):
        return dev
    keys, lo, hi = code_keys(program), cal.code_keys_hot, cal.code_keys_cold
    share = (1.0 if keys > lo else 0.0) if hi <= lo else min(1.0, max(0.0, (keys - lo) / (hi - lo)))
    return replace(dev, code_cold=share)


def stage_param_tensors(program: Program, stage: int,
                        sections: Mapping[str, int] | None = None) -> int:
    """Parameter tensors one device of pipeline `stage` holds and updates: the 'pre' section's
    on the device of virtual chunk 0, `sections['block']` per block of each of its chunks, the
    'post' section's on the device of the last chunk. A tp shard is one tensor per rank, as is
    every tensor a ZeRO optimizer walks (its loop still runs over all of them). With pp > 1 the
    last chunk's device holds its own copy of each tied tensor (`ModelWork.tied`)."""
    if sections is None:  # the counts the program's work carries (`SectionWork.param_tensors`)
        work = program.work
        sections = {"pre": work.pre.param_tensors, "post": work.post.param_tensors,
                    "block": work.block.param_tensors if work.block is not None else 0}
    last = len(program.chunks) - 1
    count = 0
    for chunk in program.device_chunks(stage):
        count += chunk.blocks * sections.get("block", 0)
        if chunk.index == 0:
            count += sections.get("pre", 0)
        if chunk.index == last:
            count += sections.get("post", 0) + (len(program.work.tied) if program.plan.pp > 1
                                                else 0)
    return count


def lockstep(dev: DeviceModel) -> bool:
    """Whether `dev` is eager and its calibration measured two ranks in lockstep."""
    cal = dev.calibration
    return cal.eager and bool(cal.lockstep_wait_s or cal.lockstep_jitter or cal.lockstep_wake_s)


def wait_time(dev: DeviceModel, work_s: float) -> float:
    """Seconds one blocking wait on another rank adds to an eager step beyond its transfer,
    after `work_s` seconds of the rank's own work since its previous wait (0 off an eager
    device): the stepping thread's slower work after it, `wait_resume_s` (it slept, and
    resumes with its code and data evicted); and, measured in lockstep, `lockstep_wait_s` +
    `lockstep_jitter` x sqrt(`work_s`) (the hand-offs of the message between threads, and the
    two ranks' arrivals drifting apart as their work's jitter accumulates), + `lockstep_wake_s`
    where `work_s` > 0 (the rank that arrived first slept and is woken: back-to-back
    collectives, no work between, find their peer there)."""
    cal = dev.calibration
    if not cal.eager:
        return 0.0
    if not lockstep(dev):
        return cal.wait_resume_s
    wake = cal.lockstep_wake_s if work_s > 0 else 0.0
    return (cal.wait_resume_s + cal.lockstep_wait_s + wake
            + cal.lockstep_jitter * math.sqrt(max(0.0, work_s)))


def sync_host_time(program: Program, dev: DeviceModel, stage: int, params: float,
                   update_s: float = 0.0, passes_s: float = 0.0) -> float:
    """Seconds one device of pipeline `stage` spends on the runtime's gradient and loss
    synchronisation outside the collectives' transfer, on an eager device (0 elsewhere): with
    dp > 1 and no ZeRO, the flat gradient buffer's packing and unpacking, `grad_sync_s` +
    tensors x `grad_sync_tensor_s` + its `params` FP32 gradients streamed
    `SYNC_BYTES_PER_PARAM` bytes each; with more than one rank, the loss all-reduce's
    2 (ranks - 1) x `collective_latency_s` (one element: latency only); on the first and last
    stage with a tied embedding (`Program.tied`), its gradients packed into one flat buffer and
    back (two copies, each a read and a write of the buffer); each of these all-reduces also
    costs its wait (`wait_time`): the gradient and tied all-reduces after the stage's forward
    and backward tasks (`passes_s` seconds), the loss all-reduce after the update's
    `update_s` seconds."""
    cal, plan = dev.calibration, program.plan
    if not cal.eager:
        return 0.0
    t, after_passes = 0.0, wait_time(dev, passes_s)
    if plan.dp > 1 and plan.zero == 0:
        t += (cal.grad_sync_s + stage_param_tensors(program, stage) * cal.grad_sync_tensor_s
              + dev.stream_time(params * SYNC_BYTES_PER_PARAM) + after_passes)
    if plan.devices > 1:
        t += 2 * (plan.devices - 1) * cal.collective_latency_s + wait_time(dev, update_s)
    if program.tied is not None and stage in (0, plan.pp - 1):
        t += dev.stream_time(4 * program.tied.nbytes) + after_passes
    return t


def tp_host_time(comms: Sized, dev: DeviceModel, compute_s: float = 0.0,
                 vocab: tuple[int, float] = (0, 0.0)) -> float:
    """Seconds a phase's tensor-parallel collectives add to it beyond their transfer, on an
    eager device (0 elsewhere), the phase's ops taking `compute_s`: per collective, its wait
    (`wait_time`); per collective of an f/g region, its autograd functions and clone
    (`tp_region_s`, and where the step's code is cold its `cold_region_s` x `code_cold`);
    `vocab` = (how many of the collectives the vocabulary-parallel embedding
    and loss issue, their own host seconds: `vocab_host`) replaces the regions of those. The
    phase's work (ops and host) is spread evenly between its collectives (without lockstep
    figures, the wait does not depend on it)."""
    cal, n = dev.calibration, len(comms)
    if not cal.eager or not n:
        return 0.0
    region = cal.tp_region_s + dev.code_cold * cal.cold_region_s
    own = (n - min(vocab[0], n)) * region + vocab[1]
    return own + n * wait_time(dev, (compute_s + own) / n)


# Collectives each vocabulary-parallel part issues per micro-batch, forward (`tpflow`): the
# embedding's partial rows (one all-reduce), the cross entropy's row max and its sums.
VOCAB_COMMS = {"embedding": 1, "loss": 2}


def vocab_host(program: Program, index: int, dev: DeviceModel) -> tuple[int, float]:
    """(collectives, host s) of the vocabulary-parallel embedding and cross entropy in virtual
    chunk `index`'s forward, on an eager device under a vocabulary-split tp plan
    (`ModelWork.vocab_parallel`); (0, 0.0) elsewhere. The embedding runs on chunk 0, the loss
    on the last chunk; each costs its measured `tp_vocab_*_s` (forward and backward together:
    its backward ops are few, and it is charged with the forward) in place of the f/g regions
    its collectives would be charged."""
    cal = dev.calibration
    if not (cal.eager and program.work.vocab_parallel):
        return 0, 0.0
    parts = [("embedding", cal.tp_vocab_embedding_s)] if index == 0 else []
    if index == len(program.chunks) - 1:
        parts.append(("loss", cal.tp_vocab_loss_s))
    return sum(VOCAB_COMMS[p] for p, _ in parts), sum(s for _, s in parts)


def p2p_host_time(dev: DeviceModel, kind: str, vs: int, last: int) -> float:
    """Seconds a pipeline task of `kind` ("F" or "B") on virtual stage `vs` (of 0..`last`)
    spends on its messages beyond their transfer, on an eager device (0 elsewhere): a forward
    receives its input activation unless it is the first stage and sends its output unless it
    is the last; a backward receives its output gradient unless it is the last and sends its
    input gradient unless it is the first (`dojo.runtime.pipeline`). A receive blocks
    (`wait_time` of no work: the pipeline's schedule already has the receiver wait for the
    sender's task, which is the drift a tp or dp wait's jitter stands for), a send is posted
    (`p2p_post_s`)."""
    cal = dev.calibration
    if not cal.eager:
        return 0.0
    first_end, last_end = vs == 0, vs == last
    receives = not (first_end if kind == "F" else last_end)
    sends = not (last_end if kind == "F" else first_end)
    return receives * wait_time(dev, 0.0) + sends * cal.p2p_post_s
