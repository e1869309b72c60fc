"""Memory per device: weights, gradients, optimizer state, activations in flight; does it fit?

Activations in flight come from the schedule itself: walking a device's task order, each
forward adds its chunk's saved bytes and each backward frees them; the peak is what must fit.
On Dojo a chip holds what it can in SRAM; the rest lives in DIP HBM at the tile edges and
streams in (`spills`), at the chip's share of the DIPs' bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import accumulate, islice
from operator import itemgetter
from typing import Any

from dojo.compiler.experts import param_groups
from dojo.compiler.mapping import device_count, leaves_per_device
from dojo.compiler.program import PRECISION_BYTES, Program
from dojo.hardware.loader import dip_count
from dojo.hardware.spec import SystemSpec
from dojo.plan.plan import Plan
from dojo.plan.policies import rebuilds_selective
from dojo.sim.fp8 import FP8_CACHE_BYTES_PER_PARAM
from dojo.sim.overlap import grad_bytes
from dojo.sim.pipeline import group_of, unit, warm_units
from dojo.sim.reserve import nccl_reserve


@dataclass(frozen=True)
class Memory:
    """Bytes per device for the most loaded pipeline stage."""

    stage: int
    params: float
    grads: float
    optimizer_state: float
    activations: float
    capacity: float
    onchip: float
    offchip_bytes_per_s: float
    reason: str

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer_state + self.activations

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity

    @property
    def spills(self) -> bool:
        """True when the device keeps part of its state off chip (Dojo: in DIP HBM)."""
        return self.onchip < self.capacity and self.total > self.onchip

    def to_json(self) -> dict[str, Any]:
        return {"params": self.params, "grads": self.grads,
                "optimizer_state": self.optimizer_state, "activations": self.activations,
                "total": self.total, "capacity": self.capacity}


def in_flight_bytes(program: Program, stage: int) -> float:
    """Peak activation bytes a stage holds under its schedule (saved from F until its B).

    The walk costs O(pp x interleave) whatever the micro-batch count m: GPipe holds every
    micro-batch, so its peak is m x the stage's saved bytes. 1F1B and interleaved 1F1B run
    `warm` forwards, then (F, B) pairs, then backwards; the live bytes only grow during the warm
    phase, only shrink in the last, and in between each pair adds the bytes of one unit and frees
    those of another. The chunk of unit k is periodic in k with period N x interleave (N
    micro-batches per virtual stage at a time, `vp_group`, pp by default), and over one period
    every chunk is added and freed N times, so the live bytes are periodic over the
    pairs and their maximum is reached within the first period. Walking the order of
    `in_flight_micro(m)` micro-batches (the same warm phase and at least one period of pairs)
    therefore gives the same peak as walking all m (a test checks it against the full walk)."""
    plan = program.plan
    saved = [c.saved_bytes for c in program.chunks]
    peak = peak_in_flight(plan.schedule, stage, plan.pp, program.microbatches, plan.interleave,
                          saved, plan.vp_group)
    # Full recompute rebuilds one block's activations at a time during backward.
    if plan.recompute == "full" and program.work.block is not None:
        peak += program.work.block.saved_bytes
    elif rebuilds_selective(plan.recompute) and program.work.block is not None:
        peak += max(0.0, program.work.block.selective_saved)  # one block rerun at a time
    return peak


def ring_buffers(program: Program) -> float:
    """Bytes of context parallelism's ring receive buffers (`Ring.buffer_bytes`): held while
    one layer's attention runs, so they add once to the peak."""
    return program.ring.buffer_bytes if program.ring is not None else 0.0


def peak_in_flight(schedule: str, stage: int, pp: int, micro: int, interleave: int,
                   saved: list[float], group: int = 0) -> float:
    """Peak of the bytes saved from F to B on `stage` (`saved` per virtual stage, bytes per
    micro-batch), in O(pp x interleave) steps (see `in_flight_bytes`); `group` micro-batches
    per virtual stage at a time (0: pp). A last group of fewer than N micro-batches changes the
    order's tail, so such a run is walked whole."""
    if schedule == "gpipe":
        return micro * sum(saved[c * pp + stage] for c in range(interleave))
    n = group_of(pp, interleave, group)
    walk = min(micro, in_flight_micro(pp, interleave, group)) if micro % n == 0 else micro
    warm = warm_units(schedule, stage, pp, walk, interleave, group)
    # The walk adds the warm forwards, then each (F of unit warm + i, B of unit i) pair: the
    # bytes live after every step are the running sums of one sequence of the stage's chunk
    # bytes (+ for a forward, - for a backward), taken in C by `accumulate`, the same
    # additions in the same order as a loop over the pairs.
    values = [saved[c * pp + stage] for c in range(interleave)]
    live = list(accumulate(_walk_steps(walk, interleave, n, warm)(
        values + [-v for v in values])))
    return max([live[warm - 1] if warm else 0, *islice(live, warm, None, 2)])


@lru_cache(maxsize=4096)
def _walk_steps(micro: int, interleave: int, group: int, warm: int) -> Any:
    """An `itemgetter` of `peak_in_flight`'s walk over one stage's chunk values followed by
    their negations: the warm forwards' chunks, then each forward's chunk and the next
    backward's negated chunk in turn (as a tuple, also for a single step)."""
    forward_chunks, backward_chunks = order_chunks(micro, interleave, group)
    order = list(forward_chunks[:warm])
    for i in range(micro * interleave - warm):
        order += (forward_chunks[warm + i], interleave + backward_chunks[i])
    getter = itemgetter(*order) if order else (lambda values: ())
    return getter if len(order) != 1 else (lambda values: (values[order[0]],))


@lru_cache(maxsize=64)
def order_chunks(micro: int, interleave: int, group: int) -> tuple[tuple[int, ...],
                                                                  tuple[int, ...]]:
    """The chunk of the k-th forward and of the k-th backward of the order (`pipeline.unit`),
    k < micro x interleave. The same for every stage and every plan with these three numbers,
    which the search asks for hundreds of thousands of times; `micro` is at most
    `in_flight_micro` or the plan's own; 64 keys bound the cache (a plan's own `micro` may be
    thousands)."""
    total = micro * interleave
    return (tuple(unit(k, False, micro, interleave, group)[2] for k in range(total)),
            tuple(unit(k, True, micro, interleave, group)[2] for k in range(total)))


def in_flight_micro(pp: int, interleave: int, group: int = 0) -> int:
    """Micro-batches whose 1F1B order covers the warm phase of every stage (at most
    2 (pp - 1) + (interleave - 1) N units, N = `group` or pp) plus one period (N x interleave
    units) of pairs, rounded up to a multiple of N (the interleaved order groups micro-batches
    by N)."""
    n = group or pp
    units = 2 * (pp - 1) + (interleave - 1) * n + n * interleave
    micro = -(-units // interleave) + 1
    return -(-micro // n) * n


def capacity(program: Program) -> tuple[float, float, float]:
    """(capacity, on-chip bytes, off-chip bytes/s) of one device for tensors: on a GPU,
    `capacity_of` less the NCCL buffers of the plan's communicators (`reserve.nccl_reserve`)."""
    cap, onchip, offchip = capacity_of(program.system)
    cuda = any(m.reserved_bytes for m in program.system.leaf.memory.values())
    if program.system.family == "dojo" or not cuda:  # the measured CPU device: no NCCL
        return cap, onchip, offchip
    usable = cap - nccl_reserve(program.plan)
    return usable, usable, offchip


def capacity_of(spec: SystemSpec) -> tuple[float, float, float]:
    """(capacity, on-chip bytes, off-chip bytes/s) of one device of `spec`; on a GPU, the bytes
    NVML reports less its `reserved_bytes` (CUDA context, cuBLAS workspaces), an
    upper bound on what any plan's tensors may use (`capacity` takes its NCCL buffers too)."""
    n = leaves_per_device(spec)
    if spec.family == "dojo":
        sram = spec.leaf.memory["sram"].bytes * n
        dips = dip_count(spec)
        if spec.dip is None or dips == 0:
            return sram, sram, 0.0
        devices = device_count(spec)
        hbm = spec.dip.hbm.bytes * dips / devices
        bw = min(spec.dip.hbm.read_bytes_per_s, spec.dip.ttp.bytes_per_s) * dips / devices
        return sram + hbm, sram, bw
    total = sum(m.bytes - m.reserved_bytes for m in spec.leaf.memory.values()) * n
    return total, total, 0.0


def device_memory(program: Program, chip_report: bool = True) -> Memory:
    """Memory of the most loaded stage, with the reason when it does not fit; on Dojo the reason
    adds the D1 compiler's per-chip report (`chip_report`: it costs a placement of every
    chip, a tenth of a second on an ExaPOD)."""
    plan = program.plan
    state_per_param = _optimizer_state_per_param(program)
    cap, onchip, offchip = capacity(program)
    best: Memory | None = None
    stages: list[Memory] = []
    for stage in range(plan.pp):
        # per parameter group: the dense weights over dp, experts' 1/ep over dp / ep
        params, grads, state = grouped_state(
            plan, [(held, n) for held, _, n in param_groups(program, stage)], state_per_param)
        mem = Memory(
            stage=stage, params=params, grads=grads, optimizer_state=state,
            activations=in_flight_bytes(program, stage) + ring_buffers(program),
            capacity=cap, onchip=onchip, offchip_bytes_per_s=offchip, reason="")
        stages.append(mem)
        if best is None or mem.total > best.total:
            best = mem
    assert best is not None  # pp >= 1 is guaranteed by Plan validation
    if not best.fits:
        best = _with_reason(best, program, stages, chip_report)
    return best


def state_memory(plan: Plan, params: float, state_per_param: float
                 ) -> tuple[float, float, float]:
    """(weights + master copy, gradients, optimizer state) bytes of a device holding `params`
    parameters (after the tp split), sharded over dp x cp by the plan's ZeRO stage. With
    grad_acc=copy the gradients are the FP32 buffer and the weights' own bf16 `.grad`."""
    return state_of(params, state_factors(plan, state_per_param))


StateFactors = tuple[float, int, bool, bool, float, int, bool, float, int, float]


def state_factors(plan: Plan, state_per_param: float) -> StateFactors:
    """What `state_of` reads of the plan: per-parameter bytes and the ranks each term shards
    over (a caller asking for many parameter counts under one plan takes them once)."""
    sizes = PRECISION_BYTES[plan.precision]
    return (sizes["weights"], plan.dp_cp if plan.zero >= 3 else 1, plan.precision == "fp8",
            plan.fp8_params, grad_bytes(plan), plan.dp_cp if plan.zero >= 2 else 1,
            plan.grad_acc == "copy", sizes["master"], plan.dp_cp if plan.zero >= 1 else 1,
            state_per_param)


def state_of(params: float, factors: StateFactors) -> tuple[float, float, float]:
    """`state_memory` of `params` parameters under `state_factors` (the same arithmetic in the
    same order, so the same bytes to the bit)."""
    size, weights_over, fp8_cached, fp8_params, grad, grads_over, copy, master, shard, \
        per_param = factors
    weights = params * size / weights_over
    if fp8_cached:  # TransformerEngine's FP8 weights and transposes: cached
        fp8 = params * FP8_CACHE_BYTES_PER_PARAM / weights_over
        weights = fp8 if fp8_params else weights + fp8  # or the weights themselves
    grads = params * grad / grads_over
    if copy:  # the bf16 `.grad` each backward writes, whole (sim/gradacc.py)
        grads += params * size
    return (weights + params * master / shard, grads, params * per_param / shard)


def grouped_state(plan: Plan, groups: list[tuple[float, int]], state_per_param: float
                  ) -> tuple[float, float, float]:
    """`state_memory` summed over parameter groups, each (parameters held after the tp split,
    the ranks its gradients reduce and ZeRO shards over): with ep the dense weights over
    dp x cp and the experts' 1/ep over dp x cp / ep (`compiler.experts.param_groups`)."""
    parts = [state_memory(replace(plan, dp=n, cp=1), held, state_per_param)
             for held, n in groups]
    return (sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts))


def _optimizer_state_per_param(program: Program) -> float:
    """Optimizer state bytes per parameter as captured (Adam: 8 in FP32; SGD momentum: 4)."""
    work = program.work
    return work.optimizer_state_bytes / max(1, work.param_count)


def _with_reason(mem: Memory, program: Program, stages: list[Memory],
                 chip_report: bool) -> Memory:
    gb = 1e9
    reason = (f"stage {mem.stage} needs {mem.total / gb:.2f} GB per {program.device} "
              f"(params {mem.params / gb:.2f} + grads {mem.grads / gb:.2f} + optimizer "
              f"{mem.optimizer_state / gb:.2f} + activations {mem.activations / gb:.2f}) "
              f"> capacity {mem.capacity / gb:.2f} GB")
    if program.system.family == "dojo" and chip_report:
        reason += "; " + dojo_oom_report(program, stages)
    return Memory(**{**mem.__dict__, "reason": reason})


def dojo_oom_report(program: Program, stages: list[Memory]) -> str:
    """The D1 compiler's per-chip out-of-memory report (chip, bytes needed, SRAM, DIP HBM)."""
    from dojo.compiler.d1 import SramOutOfMemory, plan_sram

    plan = program.plan
    per_stage = plan.tp * plan.dp_cp  # ranks: tp innermost, then cp, dp, then pp
    chips = [stages[i // per_stage] for i in range(program.devices)]
    try:
        plan_sram([m.params for m in chips], [m.grads for m in chips],
                  [m.optimizer_state for m in chips], [m.activations for m in chips],
                  program.system, program.devices)
    except SramOutOfMemory as err:
        return str(err)
    return "the D1 memory planner places it, counting DIP HBM shared over the tray"
