"""simulate(program) -> Result: step time, breakdown, memory, energy, and the timeline. A pure
function of the compiled program (graph x plan x system): no I/O, no globals, no clock."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from dojo.compiler.code import hot
from dojo.compiler.context import exposed
from dojo.compiler.experts import expert_batches
from dojo.compiler.mapping import GroupLevel, zplane_levels
from dojo.compiler.program import PRECISION_BYTES, PRECISION_DTYPES, Chunk, Comm, Program
from dojo.compiler.work import OpCost
from dojo.errors import DojoError
from dojo.hardware.loader import dip_count
from dojo.hardware.spec import SystemSpec
from dojo.plan.policies import policy_modules
from dojo.sim.attention import DEFAULT as DEFAULT_ATTN
from dojo.sim.attention import attention_kernel
from dojo.sim.collectives import collective_time
from dojo.sim.costs import Calibration, DeviceModel, calibration_with
from dojo.sim.eager import code_in_cache, in_cache, p2p_host_time, tp_host_time, vocab_host
from dojo.sim.fp8 import Fp8Timer, fp8_device, fp8_peak
from dojo.sim.fsdp import fsdp_time
from dojo.sim.gradacc import accumulate_time
from dojo.sim.memory import Memory, device_memory
from dojo.sim.overlap import grad_bytes, sm_fractions, tp_phase_time
from dojo.sim.pipeline import Span, Task, run_pipeline
from dojo.sim.stepend import finish_step


@dataclass(frozen=True)
class ChunkTimes:
    """Seconds per micro-batch for one chunk on one device."""

    forward: float
    backward: float
    recompute: float
    tp_forward: float
    tp_backward: float
    stream: float  # weights streamed from off-chip memory per pass (Dojo), overlapped
    cp_forward: float = 0.0   # ring attention's exposed K,V transfers (context parallelism)
    cp_backward: float = 0.0


@dataclass(frozen=True)
class Result:
    """What `dojo simulate` reports; `to_json` gives the documented keys exactly."""

    step_time_s: float
    samples_per_s: float
    tokens_per_s: float | None
    model_flops: float
    achieved_flops_per_device: float
    mfu: float
    breakdown_s: dict[str, float]
    memory: Memory
    energy_j: float
    spans: tuple[Span, ...]
    sync_spans: tuple[tuple[int, float, float], ...]   # (stage, start, end) of gradient sync
    optimizer_spans: tuple[tuple[int, float, float], ...]
    critical_stage: int

    def to_json(self) -> dict[str, Any]:
        return {
            "step_time_s": self.step_time_s,
            "samples_per_s": self.samples_per_s,
            "tokens_per_s": self.tokens_per_s,
            "model_flops": self.model_flops,
            "achieved_flops_per_device": self.achieved_flops_per_device,
            "mfu": self.mfu,
            "breakdown_s": dict(self.breakdown_s),
            "memory_bytes_per_device": self.memory.to_json(),
            "fits": self.memory.fits,
            "energy_j": self.energy_j,
        }


def device_model(program: Program) -> DeviceModel:
    """Peak rates of one device at the plan's precision, its calibration and the plan's
    attention kernel."""
    plan = program.plan
    spec, key = program.system, (id(program.system), plan.precision, program.leaves_per_device,
                                 plan.attn)
    held = _DEVICES.get(key)
    if held is None or held[0] is not spec or not spec.leaf.cost_model or \
            held[1].calibration is not leaf_calibration(spec):
        # One device model per system, precision and kernel: the D1 timer memoises its ops in it,
        # which the plan search (hundreds of programs on one system) reuses.
        if len(_DEVICES) >= 8:
            _DEVICES.pop(next(iter(_DEVICES)))
        held = _DEVICES[key] = (spec, device_for(spec, plan.precision,
                                                 program.leaves_per_device, plan.attn))
    return held[1]


_DEVICES: dict[tuple[int, str, int, str], tuple[SystemSpec, DeviceModel]] = {}


def default_precision(spec: SystemSpec) -> str:
    """The precision a plan runs at on `spec` when it names none: bf16 where the leaf has a
    BF16 rate (every accelerator here), else fp32 (the `cpu` system: one core has no BF16
    arithmetic)."""
    peaks = spec.leaf.peak_flops
    return "bf16" if any(d in peaks for d in PRECISION_DTYPES["bf16"]) else "fp32"


def device_for(spec: SystemSpec, precision: str, leaves: int = 1,
               attn: str = DEFAULT_ATTN) -> DeviceModel:
    """One device of `spec` (`leaves` of its leaf units) as the simulator times it at
    `precision`: peak rates, memory bandwidth, the leaf's calibration and the attention
    kernel `attn` (the plan's; ConfigError where it has no published rate on this leaf)."""
    leaf = spec.leaf
    n = leaves
    dtype = next((d for d in PRECISION_DTYPES[precision] if d in leaf.peak_flops), None)
    if dtype is None:
        raise DojoError(f"{spec.name} has no peak rate for precision '{precision}'"
                        f" (it has {', '.join(leaf.peak_flops)})")
    if precision == "fp8":
        fp8_peak(spec)  # refused in one line where the leaf has no FP8 tensor cores
    pool = leaf.memory.get("sram") or leaf.memory.get("hbm") or next(iter(leaf.memory.values()))
    if not leaf.cost_model:
        raise DojoError(f"{spec.path}: field '{spec.leaf_name}.cost_model' is missing: "
                        "expected the name of a simulator calibration")
    timer = _d1_timer(spec, dtype) if spec.family == "dojo" else None
    return DeviceModel(peak_flops=leaf.peak_flops[dtype] * n,
                       vector_flops=leaf.peak_flops.get("fp32", leaf.peak_flops[dtype]) * n,
                       mem_bytes_per_s=pool.read_bytes_per_s * n,
                       calibration=leaf_calibration(spec), timer=timer,
                       compute_units=leaf.compute_units * n,
                       attention=attention_kernel(attn, leaf.cost_model))


def leaf_calibration(spec: SystemSpec) -> Calibration:
    """The leaf's cost model with the system file's own overrides (`[gpu.calibration]`)."""
    return calibration_with(spec.leaf.cost_model, spec.leaf.calibration, spec.path,
                            f"{spec.leaf_name}.calibration")


def _d1_timer(spec: Any, dtype: str) -> Any:
    """Ops on a D1 timed by the node-level compiler (dojo.compiler.d1), memoised per op."""
    from functools import lru_cache

    from dojo.compiler.d1 import d1_op_time

    @lru_cache(maxsize=4096)
    def timed(kind: str, flops: float, nbytes: float, target: str,
              shape: tuple[int, int, int]) -> float:
        real = _matmul_shape(kind, flops, shape, target)
        if real is not None:
            return d1_op_time(real, spec, dtype=dtype).time_s * flops / _shape_flops(real)
        return d1_op_time(OpCost(kind, flops, nbytes, target), spec, dtype=dtype).time_s

    return lambda op: timed(op.kind, op.flops, op.bytes, op.target, op.shape)


def _matmul_shape(kind: str, flops: float, shape: tuple[int, int, int], target: str) -> Any:
    """The real `MatmulShape` of a matmul whose output (batch, m, n) is known: its reduction
    k = FLOP / (2 batch m n), at least 1. None when the shape is unknown, and for convolutions:
    they run as implicit GEMMs (the input read once, not its k = C kh kw im2col copy), and a
    convolution's backward is two GEMMs in one op; the D1 compiler then maps the square matmul
    with the op's FLOP and bytes."""
    from dojo.compiler.d1.ops import MatmulShape

    batch, m, n = shape
    if kind != "matrix" or flops <= 0 or min(batch, m, n) < 1 or "mm" not in target \
            or "convolution" in target:
        return None
    k = max(1, round(flops / (2.0 * batch * m * n)))
    return MatmulShape(m=m, n=n, k=k, batch=batch)


def _shape_flops(shape: Any) -> float:
    """FLOP of a `MatmulShape` (2 m n k per matmul): the op's own FLOP are kept exact by scaling
    the mapped time by their ratio (k is rounded to a whole number)."""
    return 2.0 * shape.batch * shape.m * shape.n * shape.k


def collective(program: Program, dev: DeviceModel, kind: str, nbytes: float,
               levels: tuple[GroupLevel, ...]) -> float:
    """Seconds for one collective: the fastest algorithm over the levels the group spans, or,
    on Dojo, over the Z-plane (TTPoE through the DIPs) when that is faster."""
    cal = dev.calibration
    t = collective_time(kind, nbytes, levels, cal.link_efficiency, cal.collective_latency_s)[0]
    alt = zplane_levels(program.system, levels)
    if alt:
        z = collective_time(kind, nbytes, alt, cal.link_efficiency, cal.collective_latency_s)[0]
        t = min(t, z)
    return t


def _comm_time(program: Program, comms: tuple[Comm, ...], dev: DeviceModel) -> float:
    # A chunk issues the same few collectives once per block: time each kind once.
    counts = Counter((c.kind, c.nbytes, c.levels) for c in comms)
    return sum(n * collective(program, dev, kind, nbytes, levels)
               for (kind, nbytes, levels), n in counts.items())


def _ops_time(ops: Any, dev: DeviceModel) -> float:
    # A chunk repeats its block's ops once per block: time each distinct op once.
    return sum(n * dev.op_time(o) for o, n in Counter(ops).items())


def chunk_times(program: Program, chunk: Chunk, dev: DeviceModel, memory: Memory) -> ChunkTimes:
    """Per-micro-batch times of one chunk; weights that do not fit on chip stream per pass."""
    weights = chunk.params / program.plan.tp * PRECISION_BYTES[program.plan.precision]["weights"]
    stream = 0.0
    if memory.spills and memory.offchip_bytes_per_s:
        stream = weights / memory.offchip_bytes_per_s
    if program.plan.zero >= 3:
        # FSDP: every pass gathers the chunk's weights from the data-parallel shards (and the
        # backward reduce-scatters its gradients); prefetching overlaps it with compute.
        stream = max(stream, _zero3_time(program, weights, dev))
    op_time, (fwd, bwd, rec) = dev.op_time, (_ops_time(chunk.forward, dev), _ops_time(
        chunk.backward, dev.for_phase("backward")), _ops_time(chunk.recompute, dev))
    if program.plan.precision == "fp8":
        timer = Fp8Timer(dev, fp8_device(dev, program.system, program.leaves_per_device),
                         _block_ops(program), program.microbatches, _expert_batches(program))
        op_time = timer.op_time
        fwd, bwd, rec = timer.chunk_times(chunk.forward, chunk.backward, chunk.recompute,
                                          dev.for_phase("backward"))
    sms = sm_fractions(dev)

    def tp(comms: tuple[Comm, ...], ops: tuple[OpCost, ...], compute: float,
           vocab: tuple[int, float] = (0, 0.0)) -> float:
        host = tp_host_time(comms, dev, compute, vocab)  # the eager runtime's host work, waits
        if not program.plan.tp_overlap:
            return _comm_time(program, comms, dev) + host
        return host + tp_phase_time(program, comms, ops, op_time, lambda c: collective(
            program, dev, c.kind, c.nbytes, c.levels), sms)

    recompute = rec + tp(chunk.tp_recompute, chunk.recompute, rec)
    ring_f, ring_b = _ring_times(program, dev, chunk.blocks)
    modules = policy_modules(program.plan.recompute)
    if program.plan.recompute != "none" and (modules is None or "core_attn" in modules):
        # the attention core, and its ring, run again
        recompute += ring_f
    return ChunkTimes(forward=fwd, backward=bwd, recompute=recompute,
                      tp_forward=tp(chunk.tp_forward, chunk.forward, fwd,
                                    vocab_host(program, chunk.index, dev)),
                      tp_backward=tp(chunk.tp_backward, chunk.backward, bwd), stream=stream,
                      cp_forward=ring_f, cp_backward=ring_b)


def all_chunk_times(program: Program, dev: DeviceModel, memory: Memory
                    ) -> dict[int, ChunkTimes]:
    """`chunk_times` of every chunk by virtual stage, each distinct chunk timed once: a chunk's
    ops, collectives and parameters follow from its block count and whether it is the first
    and the last (`compiler.program._chunk`, `compiler.experts.apply_experts`)."""
    last, distinct = len(program.chunks) - 1, dict[tuple[int, bool, bool], ChunkTimes]()
    for c in program.chunks:
        if (key := (c.blocks, c.index == 0, c.index == last)) not in distinct:
            distinct[key] = chunk_times(program, c, dev, memory)
    return {c.index: distinct[(c.blocks, c.index == 0, c.index == last)] for c in program.chunks}


def _mfu_peak(program: Program, dev: DeviceModel) -> float:
    """The peak MFU is relative to: the rate the plan's GEMMs run at (FP8's under fp8)."""
    if program.plan.precision == "fp8":
        return fp8_peak(program.system) * program.leaves_per_device
    return dev.peak_flops


def _expert_batches(program: Program) -> frozenset[int]:
    """Batch sizes of the routed experts' grouped GEMMs (none without experts)."""
    moe = program.experts
    return frozenset() if moe is None else expert_batches(moe.layout, moe.ep, program.plan.tp)


def _block_ops(program: Program) -> tuple[OpCost, ...] | None:
    block = program.work.block
    if block is None:
        return None
    ops = block.forward + block.backward + block.recompute_selective
    return ops + tuple(hot(o) for o in ops)  # a chunk's repeats of the block (`code.instances`)


def _ring_times(program: Program, dev: DeviceModel, blocks: int) -> tuple[float, float]:
    """Exposed seconds of context parallelism's ring attention over `blocks` layers, forward and
    backward: per layer cp - 1 transfers, each beside one ring step's attention kernels
    (`dojo.compiler.context.exposed`); with cp_comm=allgather, the collectives themselves."""
    ring = program.ring
    if ring is None or not blocks:
        return 0.0, 0.0
    if ring.comm == "allgather":   # exposed: gather K,V; in backward again, and scatter dK,dV
        full = ring.cp * ring.block_bytes
        gather = collective(program, dev, "all_gather", full, ring.levels)
        return blocks * gather, blocks * (gather + collective(program, dev, "reduce_scatter",
                                                              full, ring.levels))
    out = []
    for nbytes, ops, phase in ((ring.block_bytes, ring.forward, "forward"),
                               (2 * ring.block_bytes, ring.backward, "backward")):
        send = collective(program, dev, "send_recv", nbytes, ring.levels)
        out.append(blocks * exposed(ring.cp - 1, send, _ops_time(ops, dev.for_phase(phase))))
    return out[0], out[1]


def _zero3_time(program: Program, weights: float, dev: DeviceModel) -> float:
    gather = collective(program, dev, "all_gather", weights, program.grad_levels)
    grads = weights / PRECISION_BYTES[program.plan.precision]["weights"] \
        * grad_bytes(program.plan)
    scatter = collective(program, dev, "reduce_scatter", grads, program.grad_levels)
    return gather + scatter / 2  # the forward pays the gather, the backward both: on average


Prepared = tuple[DeviceModel, Memory, dict[int, ChunkTimes]]


def prepare(program: Program, memory: Memory | None = None) -> Prepared:
    """(device model, `device_memory` (`memory` where given), `all_chunk_times`) of `program`:
    what `simulate` and `lower_bound` start from (the search computes them once for both)."""
    dev = code_in_cache(program, in_cache(program, device_model(program)))
    memory = memory or device_memory(program)
    return dev, memory, all_chunk_times(program, dev, memory)


def simulate(program: Program, prepared: Prepared | None = None) -> Result:
    """Time one training step of `program`; deterministic and free of I/O. The work is bounded
    by the plan, not the batch: identical micro-batches repeat a periodic steady state that the
    pipeline run jumps over (`dojo.sim.pipeline`), and every total below counts tasks instead of
    walking them. `prepared`: `prepare(program)`, where the caller has it."""
    plan = program.plan
    dev, memory, times = prepared or prepare(program)
    fwd, bwd, transfer = task_durations(program, dev, times)

    def duration(stage: int, task: Task) -> float:
        kind, _, c = task
        return (fwd if kind == "F" else bwd)[c * plan.pp + stage]

    spans = run_pipeline(plan.pp, plan.interleave, program.microbatches, plan.schedule,
                         duration, transfer, group=plan.vp_group)
    sync, opt = finish_step(program, dev, spans, _collective_of(program, dev))
    step = max(end for _, _, end in opt)
    busy = [program.microbatches * sum(fwd[c * plan.pp + st] + bwd[c * plan.pp + st]
                                       for c in range(plan.interleave)) + opt[st][2] - opt[st][1]
            for st in range(plan.pp)]
    return _result(program, dev, memory, times, tuple(spans), sync, opt, step, busy)


def task_durations(program: Program, dev: DeviceModel, times: dict[int, ChunkTimes]
                   ) -> tuple[list[float], list[float], float]:
    """(forward, backward) seconds of one micro-batch's task per virtual stage, and the
    pipeline transfer between stages. A backward includes `grad_acc`'s pass, if any
    (`sim/gradacc.py`); both phases PyTorch FSDP's copies with `fsdp` (`sim/fsdp.py`)."""
    plan = program.plan
    transfer = collective(program, dev, "send_recv", program.p2p.nbytes, program.p2p.levels)
    last = plan.pp * plan.interleave - 1
    # Without overlap, a pipeline send blocks the sender's stream until it completes
    # (Megatron-LM 2021-22's blocking p2p); with overlap it only delays the receiver.
    send = 0.0 if plan.overlap or plan.pp == 1 else transfer
    fwd, bwd = [], []
    for vs in range(last + 1):
        t = times[vs]
        fwd.append(max(t.forward, t.stream) + t.tp_forward + t.cp_forward
                   + (send if vs < last else 0.0) + p2p_host_time(dev, "F", vs, last)
                   + fsdp_time(program, dev, vs, "F"))
        bwd.append(max(t.backward + t.recompute, t.stream) + t.tp_backward + t.cp_backward
                   + (send if vs else 0.0) + p2p_host_time(dev, "B", vs, last)
                   + accumulate_time(program, dev, vs) + fsdp_time(program, dev, vs, "B"))
    return fwd, bwd, transfer


def _collective_of(program: Program, dev: DeviceModel) -> Any:
    return lambda kind, nbytes, levels: collective(program, dev, kind, nbytes, levels)


def _result(program: Program, dev: DeviceModel, memory: Memory, times: dict[int, ChunkTimes],
            spans: tuple[Span, ...], sync: tuple[tuple[int, float, float], ...],
            opt: tuple[tuple[int, float, float], ...], step: float, busy: list[float]
            ) -> Result:
    plan = program.plan
    critical = max(range(plan.pp), key=lambda s: (opt[s][2], -s))
    copy = [program.microbatches * accumulate_time(program, dev, c * plan.pp + critical)
            for c in range(plan.interleave)]
    fsdp = program.microbatches * sum(fsdp_time(program, dev, c * plan.pp + critical, phase)
                                      for c in range(plan.interleave) for phase in "FB")
    breakdown = _breakdown(program, times, spans, sync, opt, critical, step, sum(copy), fsdp)
    samples = program.batch / step
    tokens = samples * program.tokens_per_sample if program.tokens_per_sample else None
    achieved = program.model_flops / step / program.devices
    return Result(step_time_s=step, samples_per_s=samples, tokens_per_s=tokens,
                  model_flops=program.model_flops, achieved_flops_per_device=achieved,
                  mfu=achieved / _mfu_peak(program, dev), breakdown_s=breakdown, memory=memory,
                  energy_j=_energy(program, dev, busy, step), spans=spans, sync_spans=sync,
                  optimizer_spans=opt, critical_stage=critical)


def _breakdown(program: Program, times: dict[int, ChunkTimes], spans: tuple[Span, ...],
               sync: tuple[tuple[int, float, float], ...],
               opt: tuple[tuple[int, float, float], ...], stage: int, step: float,
               copy: float = 0.0, fsdp: float = 0.0) -> dict[str, float]:
    # Every micro-batch runs each of the stage's chunks once forward and once backward;
    # `copy`: grad_acc's passes after them (sim/gradacc.py), optimizer work; `fsdp`: FSDP's
    # copies in the passes (sim/fsdp.py), compute.
    pp, m = program.plan.pp, program.microbatches
    compute, recompute, comm = fsdp, 0.0, 0.0
    for c in range(program.plan.interleave):
        t = times[c * pp + stage]
        compute += m * (t.forward + t.backward)
        recompute += m * t.recompute
        comm += m * (t.tp_forward + max(0.0, t.stream - t.forward) + t.tp_backward
                     + t.cp_forward + t.cp_backward
                     + max(0.0, t.stream - t.backward - t.recompute))
    last_b = max((s.end for s in spans if s.stage == stage and s.kind == "B"), default=0.0)
    comm += max(0.0, sync[stage][2] - last_b)
    optimizer = opt[stage][2] - opt[stage][1] + copy
    bubble = max(0.0, step - compute - recompute - comm - optimizer)
    return {"compute": compute, "exposed_comm": comm, "bubble": bubble, "recompute": recompute,
            "optimizer": optimizer, "data": 0.0}


def _energy(program: Program, dev: DeviceModel, busy: list[float], step: float) -> float:
    """Joules per step: devices busy at full power and idle at the calibrated fraction (the
    devices a partial plan leaves unused idle all step), plus the fixed power of every enclosing
    unit of the whole system (regulation, host CPUs, NICs), DIPs and hosts."""
    spec = program.system
    per_stage = program.devices / program.plan.pp
    p_dev = spec.leaf.power_watts * program.leaves_per_device
    first = 0
    if spec.family == "dojo":
        p_dev += spec.levels[0].spec.overhead_watts
        first = 1
    idle = dev.calibration.idle_fraction
    energy = sum(per_stage * (b * p_dev + max(0.0, step - b) * p_dev * idle) for b in busy)
    energy += program.idle_devices * p_dev * idle * step
    units = program.devices + program.idle_devices
    for lv in spec.levels[first:]:
        units = max(1, units // lv.spec.count)
        energy += units * lv.spec.overhead_watts * step
    if spec.dip is not None and spec.host is not None:
        dips = dip_count(spec)
        energy += dips * spec.dip.power_watts * step
        energy += dips // spec.host.dips * spec.host.power_watts * step
    return energy
