"""Compile graph x plan x system into the per-device program the simulator times.

Symmetry keeps it small: tensor-parallel ranks of a stage do identical work, and data-parallel
replicas are identical, so the program holds one device per pipeline stage and, per device, its
model chunks (virtual stages), the collectives each chunk issues, the pipeline transfers and the
gradient synchronisation. Collectives carry the hierarchy levels they cross (`mapping`).
"""

from __future__ import annotations

from dataclasses import dataclass

from dojo.compiler.code import instances
from dojo.compiler.context import Ring, ring_of
from dojo.compiler.experts import (
    ExpertParallel,
    MoeLayout,
    apply_experts,
    ep_work,
    replays_experts,
)
from dojo.compiler.mapping import (
    GroupLevel,
    device_count,
    device_name,
    group_levels,
    leaves_per_device,
    pair_levels,
)
from dojo.compiler.work import ModelWork, OpCost, SectionWork
from dojo.errors import DojoError
from dojo.hardware.spec import SystemSpec
from dojo.plan.plan import Plan, microbatches, plan_split
from dojo.plan.policies import policy_classes, policy_modules

# Bytes per parameter for the model copy, gradients and the optimizer's master weights, by
# precision policy. BF16/FP16 follow Megatron-LM (BF16 weights, FP32 main grads and master
# weights); CFP8 keeps FP32 masters and BF16 gradients (dojo.numerics policies).
PRECISION_BYTES = {
    "fp32": {"weights": 4, "grads": 4, "master": 0, "activation_scale": 1.0},
    "bf16": {"weights": 2, "grads": 4, "master": 4, "activation_scale": 0.5},
    "fp16": {"weights": 2, "grads": 4, "master": 4, "activation_scale": 0.5},
    "cfp8": {"weights": 1, "grads": 2, "master": 4, "activation_scale": 0.5},
    # FP8 on GPUs (TransformerEngine): BF16 weights and activations, FP32 grads and masters;
    # the FP8 GEMMs and their weight cache are dojo.sim.fp8's.
    "fp8": {"weights": 2, "grads": 4, "master": 4, "activation_scale": 0.5},
}
# The dtype whose peak rate the matrix units run at, per policy, in order of preference
# (CFP8 is Dojo's: a GPU runs a CFP8 run in BF16; fp8's FP8 GEMMs are dojo.sim.fp8's).
PRECISION_DTYPES = {"fp32": ("fp32",), "bf16": ("bf16",), "fp16": ("fp16", "bf16"),
                    "cfp8": ("cfp8", "bf16"), "fp8": ("bf16",)}
# Bytes per gradient element on the wire and in the buffers, by `plan.grad_reduce`.
GRAD_REDUCE_BYTES = {"fp32": 4.0, "bf16": 2.0}


def grad_bytes(plan: Plan) -> float:
    """Bytes per gradient element in the buffers and on the wire under `plan.grad_reduce`."""
    if plan.grad_reduce == "auto":
        return float(PRECISION_BYTES[plan.precision]["grads"])
    return GRAD_REDUCE_BYTES[plan.grad_reduce]


def grad_sync_kind(plan: Plan) -> str:
    """The data-parallel gradient collective: `all_reduce` without ZeRO; `reduce_scatter` under
    ZeRO 1-3, each rank receiving the summed gradients of the shard it updates (ZeRO's P_os,
    Rajbhandari et al. 2020 sec. 7: a reduce-scatter then the parameters' all-gather, 2 psi as
    data parallelism; Megatron-LM's distributed optimizer, `start_grad_sync` on its buffer;
    DeepSpeed's ZeRO 1/2 `average_tensor`). ZeRO 1 with `grad_acc=copy` is DeepSpeed's
    BF16_Optimizer, which all-reduces the whole FP32 buffer (`_bf16_reduce_grads`) before the
    same all-gather (`dojo.sim.gradacc`)."""
    if plan.zero == 0 or (plan.zero == 1 and plan.grad_acc == "copy"):
        return "all_reduce"
    return "reduce_scatter"


def tied_copy(work: ModelWork, plan: Plan) -> int:
    """Parameters of the last stage's copy of a tied embedding (`ModelWork.tied`, whole as
    `Chunk.params`): with pp > 1 the first stage holds the embedding and the last stage the
    head, so each keeps the weight (Megatron-LM's `shared_embedding`); none with pp = 1."""
    return sum(work.tied) if plan.pp > 1 else 0


@dataclass(frozen=True)
class Comm:
    """A collective: `kind`, `nbytes` per member, over `levels`, issued by the `group` axis."""

    kind: str
    nbytes: float
    levels: tuple[GroupLevel, ...]
    group: str


@dataclass(frozen=True)
class Chunk:
    """One virtual stage (a contiguous run of blocks) on one device, per micro-batch."""

    index: int
    blocks: int
    forward: tuple[OpCost, ...]
    backward: tuple[OpCost, ...]
    recompute: tuple[OpCost, ...]
    tp_forward: tuple[Comm, ...]
    tp_backward: tuple[Comm, ...]
    tp_recompute: tuple[Comm, ...]
    saved_bytes: float   # kept from forward to backward, one micro-batch
    params: int          # trainable parameters of the chunk, whole (before the tp split)


@dataclass(frozen=True)
class Program:
    """What each pipeline-stage device runs in one step. Bytes, FLOP, counts."""

    plan: Plan
    system: SystemSpec
    device: str
    devices: int
    microbatches: int
    batch: int
    chunks: tuple[Chunk, ...]            # by virtual stage: chunk v runs on device v % pp
    p2p: Comm                            # one micro-batch's activations to the next stage
    grad_sync_kind: str
    grad_levels: tuple[GroupLevel, ...]
    tp_levels: tuple[GroupLevel, ...]
    work: ModelWork
    model_flops: float                   # per step, forward + backward, no recompute
    leaves_per_device: int
    tokens_per_sample: int | None = None  # sequence length for sequence models
    ring: Ring | None = None             # context parallelism's ring attention (cp > 1)
    experts: ExpertParallel | None = None  # expert parallelism (`compiler.experts`)
    idle_devices: int = 0                # devices of the system the plan leaves unused
    # the tied embedding's gradient all-reduce between the first and last stage, pp > 1
    tied: Comm | None = None

    def device_chunks(self, stage: int) -> tuple[Chunk, ...]:
        return tuple(c for c in self.chunks if c.index % self.plan.pp == stage)

    def device_params(self, stage: int) -> float:
        """Trainable parameters held by one device of `stage` (after the tp split)."""
        return sum(c.params for c in self.device_chunks(stage)) / self.plan.tp


def compile_program(work: ModelWork, plan: Plan, system: SystemSpec, batch: int,
                    tokens_per_sample: int | None = None, kv_width: int = 0,
                    moe: MoeLayout | None = None) -> Program:
    """Lay the plan over the system: chunks per virtual stage, collectives mapped onto links.
    Ranks are tp innermost, then cp, dp and pp; with cp > 1, `work` is one cp rank's
    (`context.ring_work`) and `kv_width` the K elements per token on one tp rank. `moe`: the
    model's routed experts, for the plan's expert parallelism (`compiler.experts`)."""
    devices = device_count(system)
    if plan.devices > devices:
        cp = f" x cp {plan.cp}" if plan.cp > 1 else ""
        raise DojoError(f"plan uses dp {plan.dp} x tp {plan.tp} x pp {plan.pp}{cp} = "
                        f"{plan.devices} devices; {system.name} has {devices} "
                        f"{device_name(system)}s")
    if plan.cp > 1 and not (tokens_per_sample and kv_width):
        raise DojoError(f"cp {plan.cp}: context parallelism needs a sequence model with "
                        "attention heads")
    tp_levels = group_levels(system, plan.tp, 1)
    dp_levels = group_levels(system, plan.dp_cp, plan.tp)
    pp_levels = group_levels(system, 2, plan.tp * plan.dp_cp)
    ring = ring_of(work, plan.cp, group_levels(system, plan.cp, plan.tp), kv_width,
                   (tokens_per_sample or 0) // plan.cp, plan.mb,
                   4 * PRECISION_BYTES[plan.precision]["activation_scale"], plan.cp_comm)
    replay = moe is not None and replays_experts(work, moe, plan)
    work = ep_work(work, moe, plan, PRECISION_BYTES[plan.precision]["activation_scale"])
    virtual = plan.pp * plan.interleave
    chunks = tuple(_chunk(work, plan, v, virtual, tp_levels) for v in range(virtual))
    # Megatron's scatter/gather optimisation sends 1/tp of the activations per tp rank.
    p2p_bytes = work.residual_bytes / plan.tp
    grads_kind = grad_sync_kind(plan)
    micro = microbatches(plan, batch)
    program = Program(plan=plan, system=system, device=device_name(system), devices=plan.devices,
                   idle_devices=devices - plan.devices,
                   microbatches=micro, batch=batch, chunks=chunks,
                   p2p=Comm("send_recv", p2p_bytes, pp_levels, "pp"),
                   grad_sync_kind=grads_kind, grad_levels=dp_levels, tp_levels=tp_levels,
                   work=work,
                   model_flops=(work.forward_flops + work.backward_flops) * micro * plan.dp,
                   leaves_per_device=leaves_per_device(system),
                   tokens_per_sample=tokens_per_sample, ring=ring,
                   tied=_tied_comm(work, plan, system))
    return apply_experts(program, moe, replay)


def _tied_comm(work: ModelWork, plan: Plan, system: SystemSpec) -> Comm | None:
    """After the backward, the first and the last stage of each (dp, cp, tp) rank sum their
    copies' gradients, one tp rank's shard (vocabulary rows / tp) at the gradient dtype
    (Megatron-LM's `_allreduce_word_embedding_grads`, `runtime.trainer`'s "tied" group)."""
    params = tied_copy(work, plan)
    if not params:
        return None
    return Comm("all_reduce", params / plan.tp * grad_bytes(plan),
                pair_levels(system, plan.devices), "tied")


def _chunk(work: ModelWork, plan: Plan, v: int, virtual: int,
           tp_levels: tuple[GroupLevel, ...]) -> Chunk:
    split = plan_split(plan, work.repeat) if work.block else None
    if work.block is not None and (split is None or sum(split) != work.repeat):
        raise DojoError(f"{virtual} virtual stages cannot split {work.repeat} blocks")
    per_chunk = split[v] if split else 0
    sections: list[tuple[SectionWork, int]] = []
    if v == 0:
        sections.append((work.pre, 1))
    if work.block is not None:
        sections.append((work.block, per_chunk))
    if v == virtual - 1:
        sections.append((work.post, 1))
    fwd: list[OpCost] = []
    bwd: list[OpCost] = []
    rec: list[OpCost] = []
    tp_f: list[Comm] = []
    tp_b: list[Comm] = []
    tp_r: list[Comm] = []
    saved = 0.0
    params = 0
    for sec, n in sections:
        fwd += instances(sec.forward, n)
        bwd += instances(sec.backward, n)
        tp_f += _tp_comms(tp_levels, sec.tp_forward) * n
        tp_b += _tp_comms(tp_levels, sec.tp_backward) * n
        params += sec.params * n
        # Checkpointing applies to the repeated blocks (their inputs are the checkpoints);
        # embeddings, heads and models without blocks keep their activations.
        # (Megatron's module recompute applies to every layer, the dense ones in `pre` too.)
        modular = policy_modules(plan.recompute) is not None
        recompute = plan.recompute if sec is work.block or modular else "none"
        classes = policy_classes(recompute)
        if classes is not None:  # op-level policy: in the selective slots (compiler.recompute)
            recompute = "selective"
            if "mm" not in classes:  # the rerun linears repeat their tp collectives
                tp_r += _tp_comms(tp_levels, sec.tp_forward) * n
        elif policy_modules(recompute) is not None:  # Megatron modules (compiler.modules)
            recompute = "selective"
            tp_r += _tp_comms(tp_levels, sec.tp_recompute) * n
        saved += _saved(sec, recompute) * n
        if recompute == "full":
            rec += instances(sec.forward, n)
            tp_r += _tp_comms(tp_levels, sec.tp_forward) * n
        elif recompute == "selective":
            rec += instances(sec.recompute_selective, n)
    if v == virtual - 1:  # the head's copy of a tied embedding
        params += tied_copy(work, plan)
    blocks = per_chunk if work.block is not None else 0
    return Chunk(index=v, blocks=blocks, forward=tuple(fwd), backward=tuple(bwd),
                 recompute=tuple(rec), tp_forward=tuple(tp_f), tp_backward=tuple(tp_b),
                 tp_recompute=tuple(tp_r), saved_bytes=saved, params=params)


def _saved(sec: SectionWork, recompute: str) -> float:
    if recompute == "full":
        return sec.input_bytes
    if recompute == "selective":
        return sec.saved_bytes - sec.selective_saved
    return sec.saved_bytes


def _tp_comms(levels: tuple[GroupLevel, ...],
              comms: tuple[tuple[str, float], ...]) -> list[Comm]:
    """A section's tensor-parallel traffic (`tpflow.tp_collectives`: where the dataflow leaves
    the split region, as Megatron's f and g, or needs a split tensor whole) on the tp group's
    links."""
    return [Comm(kind, nbytes, levels, "tp") for kind, nbytes in comms]
