"""A parallel plan: how one training step is split over devices.

Written on the command line as ``dp=8,tp=8,pp=16,mb=1,interleave=3,recompute=selective,sp=on,
zero=1``. Terms, as in PyTorch (DeviceMesh axes) and Megatron-LM:

- `dp`: data-parallel replicas (gradients all-reduced, or reduce-scattered with `zero`).
- `tp`: tensor parallelism, Megatron column/row splits of each block's matmuls; `sp` adds sequence
  parallelism (norms and dropout sharded on the sequence, all-reduce -> reduce-scatter+all-gather).
- `cp`: context parallelism (ring attention, as Megatron-LM and TransformerEngine): each of `cp`
  ranks holds seq/cp tokens of every sequence (two chunks of seq/(2 cp), for causal balance),
  and attention passes K and V blocks around the ring (`dojo.compiler.context`). Ranks are tp
  innermost, then cp, then dp, then pp; gradients are reduced (and ZeRO shards) over dp x cp.
  `cp_comm` (Megatron-LM's --cp-comm-type): `p2p` passes blocks around the ring beside the
  attention of each step; `allgather` gathers all of K and V before attention (exposed) and
  reduce-scatters dK, dV after it, as Llama 3 was trained.
- `pp`: pipeline stages cut on block boundaries; `mb` micro-batch size in samples; `interleave`
  virtual stages per device; `schedule` gpipe | 1f1b | interleaved.
- `vp_group` (Megatron-Core's microbatch_group_size_per_vp_stage, Llama 3's tunable N): under
  the interleaved schedule, contiguous micro-batches each virtual stage runs before the next
  (0, the default: pp, Megatron's fixed choice). The warm phase holds (interleave - 1) N +
  2 min(N, pp) (pp - 1 - s) // pp units on stage s (`dojo.sim.pipeline`): a smaller N holds fewer
  activations, and below about 2 pp / 3 the backward wave around the ring stalls the steady
  state. 1 <= N <= micro-batches; the last group (micro-batches mod N) must be 0 or large
  enough not to deadlock the ring.
- `stages`: blocks per virtual stage, `stages=7:8:8:7` (pp x interleave counts adding up to the
  blocks; `dojo.plan.stages`); without it the split is even, or Llama 3's (embedding and head
  each in place of one block).
- Devices: a plan may use part of a machine. dp x tp x pp x cp must not exceed the devices;
  the rest stay idle (`dojo simulate` says how many). The global batch must divide into dp
  replicas of whole micro-batches (batch = dp x mb x micro-batches): a remainder is refused
  with the arithmetic, never dropped or padded.
- `recompute`: none | selective (attention core) | full (every block's forward, once more) |
  an op-level policy, `ops:mm+attention` or `matmuls`: the block is checkpointed but the outputs
  of the named matmul classes are kept (`dojo.plan.policies`).
- `ep`: expert parallelism, carved out of dp (dp % ep == 0, as Megatron-LM): each MoE layer's
  routed experts spread over ep data-parallel ranks, tokens dispatched to them and combined
  back by all-to-all; expert gradients reduced over dp / ep (`dojo.compiler.experts`).
  `imbalance` (>= 1): the busiest expert rank's load over the mean (its expert work and
  all-to-all bytes scale by it). The capacity factor is the model's (`--set capacity=1.25`).
  `dispatcher` (Megatron-Core's token dispatcher): `alltoall` sends each of a token's top_k
  copies to its expert's rank; `flex` (the flex dispatcher's DeepEP / HybridEP backends) sends a
  token once to each other node that holds one of its experts and fans it out over NVLink there.
  `etp` (Megatron-Core's expert_tensor_parallel_size): 0 (default) = tp, the experts split over
  the tp ranks like the other weights and an ep group at stride tp; 1 = the experts whole on
  each rank, tp folded into the expert ranks: an ep group is ep consecutive ranks of the
  tp x dp x cp ones ((tp x dp x cp) % ep == 0) and expert gradients reduce over tp x dp x cp / ep.
- `zero`: 0 none; 1 shard optimizer state; 2 also gradients; 3 also parameters (FSDP). At 0
  the gradients are all-reduced whole over dp x cp; at 1-3 they are reduce-scattered (each rank
  receives its shard's sum), each rank updates its shard and the updated weights are
  all-gathered: 2 psi per step as plain data parallelism (ZeRO, Rajbhandari et al. 2020 sec. 7;
  Megatron-LM's distributed optimizer; DeepSpeed's ZeRO 1/2). zero=1 with `grad_acc=copy` is
  DeepSpeed's BF16_Optimizer, which all-reduces the whole FP32 gradients instead
  (`_bf16_reduce_grads`), then gathers (`update_lp_params`).
- `fsdp` (with zero=3): which implementation runs ZeRO 3, for the copies it issues around its
  collectives (`dojo.sim.fsdp`): 0 (default) the collectives alone; 1 PyTorch FSDP1
  (`FullyShardedDataParallel`, one FlatParameter per wrapped module: the views' gradients
  concatenated into it, cast to the reduction dtype and pre-divided before the reduce-scatter);
  2 PyTorch FSDP2 (`fully_shard`: every gather copied out into the parameters, the gradients
  copied into the reduce-scatter buffer). Not with ep > 1.
- `attn`: the fused attention kernel the device runs (`dojo.sim.attention`): `auto` (default)
  times it at the GEMM calibration; `fa2`, `fa3`, `cudnn` (FlashAttention-2 and -3, cuDNN's
  fused attention) at the kernel's published fraction of peak on the device kind, forward and
  backward (`sim/attention_kernels.toml`; a kernel with no published rate there is refused).
- `precision`: the compute dtype policy (fp32, bf16, fp16, cfp8 on Dojo, fp8 on GPUs with FP8
  tensor cores: the blocks' linear GEMMs in FP8 with per-tensor scaling as TransformerEngine runs
  them, the rest in BF16, BF16 weights with FP32 masters; `dojo.sim.fp8`). `fp8_params=on`
  keeps the weights themselves in FP8 (TransformerEngine's fp8_model_init, NeMo's
  fp8_param_gather: FP8 data and transpose, no BF16 copy; ZeRO gathers them at 1 byte).
- `overlap`: overlap the data-parallel gradient reduction with the backward pass, bucket by
  bucket (one bucket per block) as each virtual stage's gradients complete (`dojo.sim.overlap`).
- `tp_overlap`: overlap the tensor-parallel all-gathers and reduce-scatters with the GEMMs that
  depend on them (TransformerEngine's userbuffers; needs `sp=on`), at the SM cost the overlapped
  communication kernels take from the GEMMs.
- `grad_reduce`: the dtype of the data-parallel gradient reduction and of the gradient buffers:
  fp32 | bf16 | auto (the precision policy's gradients: FP32 main grads under bf16/fp16/fp8).
- `grad_acc`: where micro-batches' gradients are summed: `inplace` (the backward adds into the
  reduction buffer itself, as autograd and Megatron-LM's fused wgrad do) or `copy` (DeepSpeed's
  BF16_Optimizer: bf16 gradients per micro-batch, then a pass that adds them into the FP32
  buffer after every backward, and at zero=1 the all-reduce of that buffer before the gather;
  needs precision=bf16, FP32 gradients and zero 0 or 1; `dojo.sim.gradacc`).
- `fusion`: how vector ops between matmuls become kernels: `full` (a compiler such as
  torch.compile/Inductor fuses each run), `kernels` (hand-written fused kernels as in Megatron-LM
  and apex: a pointwise chain fuses up to and including one softmax/norm/reduction, which ends
  the kernel), `none` (eager PyTorch, one kernel per op). `on`/`off` mean `full`/`none`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from dojo.config import check, parse, parse_scalar
from dojo.errors import ConfigError
from dojo.plan.policies import check_recompute
from dojo.plan.stages import check_stages, default_split, parse_stages, show_stages, split_blocks

SCHEDULES = ("gpipe", "1f1b", "interleaved")
RECOMPUTE = ("none", "selective", "full")
PRECISIONS = ("fp32", "bf16", "fp16", "cfp8", "fp8")
GRAD_REDUCE = ("auto", "fp32", "bf16")
GRAD_ACCS = ("inplace", "copy")
FUSIONS = ("full", "kernels", "none")
CP_COMMS = ("p2p", "allgather")
DISPATCHERS = ("alltoall", "flex")
ATTN_KERNELS = ("auto", "cudnn", "fa2", "fa3")  # dojo.sim.attention.kernel_names() (tested)


@dataclass(frozen=True, kw_only=True)
class Plan:
    """How a step is split; see the module docstring for each field."""

    dp: int = field(default=1, metadata=check(ge=1))
    tp: int = field(default=1, metadata=check(ge=1))
    pp: int = field(default=1, metadata=check(ge=1))
    cp: int = field(default=1, metadata=check(ge=1))
    mb: int = field(default=1, metadata=check(ge=1))
    interleave: int = field(default=1, metadata=check(ge=1))
    schedule: str = field(default="1f1b", metadata=check(choices=SCHEDULES))
    recompute: str = "none"  # RECOMPUTE or an op-level policy (dojo.plan.policies)
    sp: bool = False
    zero: int = field(default=0, metadata=check(ge=0, le=3))
    precision: str = field(default="bf16", metadata=check(choices=PRECISIONS))
    overlap: bool = True
    fusion: str = field(default="full", metadata=check(choices=FUSIONS))
    tp_overlap: bool = False
    grad_reduce: str = field(default="auto", metadata=check(choices=GRAD_REDUCE))
    grad_acc: str = field(default="inplace", metadata=check(choices=GRAD_ACCS))
    fp8_params: bool = False
    cp_comm: str = field(default="p2p", metadata=check(choices=CP_COMMS))
    ep: int = field(default=1, metadata=check(ge=1))
    imbalance: float = field(default=1.0, metadata=check(ge=1))
    dispatcher: str = field(default="alltoall", metadata=check(choices=DISPATCHERS))
    etp: int = field(default=0, metadata=check(ge=0))   # 0: tp (Megatron-Core's default)
    vp_group: int = field(default=0, metadata=check(ge=0))   # 0: pp (Megatron's fixed N)
    fsdp: int = field(default=0, metadata=check(ge=0, le=2))  # 0: collectives only
    attn: str = field(default="auto", metadata=check(choices=ATTN_KERNELS))
    stages: tuple[int, ...] = field(default=(), metadata=check(ge=0))

    @property
    def devices(self) -> int:
        return self.dp * self.tp * self.pp * self.cp

    @property
    def dp_cp(self) -> int:
        """Ranks holding the same weights: gradients are reduced, and ZeRO shards, over dp x cp."""
        return self.dp * self.cp

    def text(self, full: bool = False) -> str:
        """The plan in CLI form, defaults left out unless `full` (cp_comm only with cp > 1,
        fp8_params only with precision=fp8, grad_acc only when copy, fsdp and attn only when
        named)."""
        default = Plan()
        parts = []
        for name in ("dp", "tp", "pp", "cp", "mb", "interleave", "schedule", "recompute", "sp",
                     "zero", "precision", "overlap", "fusion", "tp_overlap", "grad_reduce",
                     "grad_acc", "cp_comm", "ep", "imbalance", "dispatcher", "etp", "fp8_params",
                     "vp_group", "fsdp", "attn", "stages"):
            value = getattr(self, name)
            if name == "stages":
                if value:
                    parts.append(f"stages={show_stages(value)}")
                continue
            if name == "cp_comm" and self.cp == 1 and value == default.cp_comm:
                continue
            if name in ("ep", "imbalance", "dispatcher", "etp") and self.ep == 1 and \
                    value == getattr(default, name):
                continue   # no expert parallelism: nothing to show
            if name == "fp8_params" and self.precision != "fp8" and not value:
                continue
            if name == "vp_group" and self.interleave == 1 and not value:
                continue
            if name in ("fsdp", "attn") and value == getattr(default, name):
                continue   # shown only when an implementation is named
            if name == "grad_acc" and value == default.grad_acc:
                continue   # DeepSpeed's copy only: the default adds nothing to show
            if full or name in ("dp", "tp", "pp") or value != getattr(default, name):
                parts.append(f"{name}={_show(value)}")
        return ",".join(parts)


def fast_replace(plan: Plan, **changes: object) -> Plan:
    """`dataclasses.replace` for a `Plan` without its generated __init__ (20 frozen
    setattrs, with no __post_init__ to run): the search builds millions of plans, and this
    was a fifth of its time on DeepSeek-V3. Same fields, equality and hash."""
    new = object.__new__(Plan)
    new.__dict__.update(plan.__dict__, **changes)
    return new


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    """What a plan must divide: blocks to cut into stages, heads and widths to split."""

    layers: int
    heads: int = 0
    hidden: int = 0
    ffn: int = 0
    kv_heads: int = 0
    experts: int = 0      # routed experts per MoE layer (0: no MoE layers)


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def parse_plan(text: str, source: str = "--plan") -> Plan:
    """Parse ``key=value,...``; `on`/`off` for booleans. Unknown keys list the valid ones; a key
    given twice, or a setting that means nothing under the rest of the plan, is refused."""
    if not text.strip():
        raise ConfigError(source, "plan", text, "key=value pairs, e.g. dp=8,tp=8,pp=16,mb=1 "
                          "(leave it out for the default)")
    data: dict[str, object] = {}
    for item in (p.strip() for p in text.split(",")):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not item:  # "dp=2," or "dp=2,,tp=2": a value dropped, or a typo; say which
            raise ConfigError(source, "plan", text, "key=value pairs joined by single commas "
                              "(an item is empty: a trailing or doubled comma)")
        if not sep or not key or not raw.strip():
            raise ConfigError(source, key or "plan", item,
                              "key=value with a key and a value, e.g. dp=8,tp=8,pp=16,mb=1")
        value = parse_scalar(raw.strip())
        if key == "fusion" and isinstance(value, bool):
            value = "full" if value else "none"
        if key == "stages":
            value = parse_stages(raw.strip(), source)
        if key in data:
            raise ConfigError(source, key, raw.strip(),
                              f"each key once ({key} is given twice: {key}={_show(data[key])} "
                              f"and {key}={raw.strip()})")
        data[key] = value
    plan = parse(Plan, data, source)
    if plan.interleave > 1 and plan.schedule == "1f1b":
        # Megatron's interleaved schedule is 1F1B over virtual stages: the same schedule.
        plan = replace(plan, schedule="interleaved")
    check_plan(plan, source)
    return plan


def check_plan(plan: Plan, source: str = "--plan") -> None:
    """Refuse settings that mean nothing under the rest of the plan (merely redundant ones, such
    as zero>0 with dp=1 or schedule=gpipe with pp=1, give the same step and are accepted)."""
    if plan.interleave > 1 and plan.pp == 1:
        raise ConfigError(source, "interleave", plan.interleave,
                          f"1 with pp=1: virtual stages interleave pipeline stages, and pp 1 x "
                          f"interleave {plan.interleave} = {plan.interleave} chunks on one device "
                          "run back to back (use pp >= 2)")
    if plan.schedule == "interleaved" and plan.interleave < 2:
        raise ConfigError(source, "interleave", plan.interleave,
                          "at least 2 virtual stages per device for schedule=interleaved")
    if plan.vp_group and plan.interleave == 1:
        raise ConfigError(source, "vp_group", plan.vp_group,
                          "0 (unset) with interleave=1: micro-batch groups order the virtual "
                          "stages of the interleaved schedule (give interleave >= 2)")
    if plan.sp and plan.tp == 1:
        raise ConfigError(source, "sp", "on", "tp > 1 (sequence parallelism splits over tp)")
    check_recompute(plan.recompute, source, RECOMPUTE)
    if plan.fp8_params and plan.precision != "fp8":
        raise ConfigError(source, "fp8_params", "on",
                          f"precision=fp8 (FP8 weights need FP8 GEMMs; precision is "
                          f"{plan.precision})")
    if plan.tp_overlap and not plan.sp:
        raise ConfigError(source, "tp_overlap", "on",
                          "sp=on: the overlapped tp communication is the all-gathers and "
                          "reduce-scatters of sequence parallelism (Megatron-LM's "
                          "--tp-comm-overlap needs --sequence-parallel)")
    if plan.grad_acc == "copy" and (plan.precision != "bf16" or plan.grad_reduce == "bf16"):
        raise ConfigError(source, "grad_acc", "copy",
                          f"precision=bf16 with FP32 gradients (DeepSpeed's BF16_Optimizer adds "
                          f"bf16 gradients into FP32 ones; precision is {plan.precision}, "
                          f"grad_reduce {plan.grad_reduce}), or grad_acc=inplace")
    if plan.grad_acc == "copy" and plan.zero >= 2:
        raise ConfigError(source, "grad_acc", "copy",
                          f"zero 0 or 1 (DeepSpeed's BF16_Optimizer shards the optimizer state "
                          f"only; zero is {plan.zero}), or grad_acc=inplace")
    if plan.fsdp and plan.zero != 3:
        raise ConfigError(source, "fsdp", plan.fsdp,
                          f"zero=3 (FSDP {plan.fsdp} shards the parameters; zero is "
                          f"{plan.zero}), or leave fsdp out")
    if plan.fsdp and plan.ep > 1:
        raise ConfigError(source, "fsdp", plan.fsdp,
                          f"ep=1 (how PyTorch FSDP shards experts over ep {plan.ep} is not "
                          "modelled), or leave fsdp out")
    if plan.stages and len(plan.stages) != plan.pp * plan.interleave:
        raise ConfigError(source, "stages", show_stages(plan.stages),
                          f"one count per virtual stage: pp {plan.pp} x interleave "
                          f"{plan.interleave} = {plan.pp * plan.interleave} counts, not "
                          f"{len(plan.stages)}")


def check_fit(plan: Plan, devices: int, batch: int, source: str = "--plan") -> None:
    """What `validate_plan` checks without the model: the plan's own settings, the devices
    and the batch split. Checked before a capture, whose size is the micro-batch (mb=10^12
    would otherwise be traced first)."""
    check_plan(plan, source)
    if batch < 1:
        raise ConfigError("--batch", "batch", batch, "at least 1 sample")
    if plan.devices > devices:
        cp = f" x cp {plan.cp}" if plan.cp > 1 else ""
        raise ConfigError(source, "dp*tp*pp" + ("*cp" if cp else ""), plan.devices,
                          f"at most the system's {devices} devices (dp {plan.dp} x tp {plan.tp} "
                          f"x pp {plan.pp}{cp} = {plan.devices})")
    if batch % (plan.dp * plan.mb):
        raise ConfigError(source, "mb", plan.mb,
                          f"a micro-batch that divides the per-replica batch: batch {batch} / "
                          f"(dp {plan.dp} x mb {plan.mb}) = {batch / (plan.dp * plan.mb):g}")


def validate_plan(plan: Plan, shape: ModelShape, devices: int, batch: int,
                  source: str = "--plan") -> None:
    """Check that `plan` divides the model, the batch and the devices; errors show the arithmetic.

    `batch` is the global batch in samples; `devices` the devices the system offers (a plan
    may use fewer: the rest stay idle).
    """
    check_fit(plan, devices, batch, source)
    chunks = plan.pp * plan.interleave
    if plan.stages:
        check_stages(plan.stages, plan.pp, plan.interleave, shape.layers, source)
    elif chunk_blocks(shape.layers, chunks) is None:
        raise ConfigError(source, "pp", plan.pp,
                          f"stages that divide the {shape.layers} blocks: pp {plan.pp} x "
                          f"interleave {plan.interleave} = {chunks} divides neither "
                          f"{shape.layers} nor {shape.layers} + 2 (embedding and head as blocks);"
                          f" give the blocks per stage with stages=a:b:...")
    for name, size in (("heads", shape.heads), ("hidden", shape.hidden), ("ffn", shape.ffn),
                       ("kv_heads", shape.kv_heads)):
        if plan.tp > 1 and size and size % plan.tp:
            raise ConfigError(source, "tp", plan.tp,
                              f"a divisor of the model's {name} = {size} "
                              f"({size} / {plan.tp} = {size / plan.tp:g})")
    check_experts(plan, shape, source)
    micro = batch // (plan.dp * plan.mb)
    if plan.vp_group:
        check_group(plan, micro, source)
    elif plan.interleave > 1 and plan.schedule != "gpipe" and micro % plan.pp:
        raise ConfigError(source, "mb", plan.mb,
                          f"an interleaved schedule needs micro-batches ({micro}) divisible by "
                          f"pp {plan.pp}")


def ring_spread(pp: int, group: int) -> int:
    """Warm units stage 0 runs beyond stage pp - 1 under the interleaved schedule with `group`
    micro-batches per virtual stage: 2 min(N, pp) (pp - 1) // pp (`dojo.sim.pipeline`)."""
    return 2 * min(group, pp) * (pp - 1) // pp


def group_runs(pp: int, micro: int, n: int) -> bool:
    """Whether groups of `n` micro-batches run `micro` micro-batches on `pp` stages without
    deadlocking (`check_group`'s rule): 1 <= n <= micro, and a last group of micro mod n that
    is 0 or at least `ring_spread` - n."""
    left = micro % n if 1 <= n <= micro else -1
    return left == 0 or (left > 0 and left + n >= ring_spread(pp, n))


def check_group(plan: Plan, micro: int, source: str = "--plan") -> None:
    """`vp_group` N against the `micro` micro-batches per pipeline: 1 <= N <= micro, and a last
    group of r = micro mod N that is 0 or at least spread - N, spread = `ring_spread`: with
    fewer, stage 0's forward of the last group waits on stage pp - 1's forward r units earlier,
    which that stage runs after a backward waiting (N units back, a whole group) on a backward
    stage 0 runs only after that very forward: a cycle, the run deadlocks (`dojo.sim.pipeline`).
    """
    n = plan.vp_group
    if n > micro:
        raise ConfigError(source, "vp_group", n,
                          f"at most the micro-batches per pipeline: batch / (dp {plan.dp} x mb "
                          f"{plan.mb}) = {micro}")
    left, spread = micro % n, ring_spread(plan.pp, n)
    if not group_runs(plan.pp, micro, n):
        raise ConfigError(source, "vp_group", n,
                          f"a group that divides the {micro} micro-batches or leaves at least "
                          f"{spread - n}: {micro} = {micro // n} x {n} + {left}, and a last group "
                          f"of {left} deadlocks the pipeline ({left} + N {n} < the warm spread "
                          f"2 min(N, pp) (pp - 1) // pp = {spread})")


def expert_tp(plan: Plan) -> int:
    """The tensor-parallel split of the routed experts: `etp`, or tp when 0."""
    return plan.etp or plan.tp


def check_experts(plan: Plan, shape: ModelShape, source: str = "--plan") -> None:
    """ep is carved out of dp and splits whole experts: dp % ep == 0, experts % ep == 0; the
    busiest of ep ranks gets at most all the tokens, ep x the mean: 1 <= imbalance <= ep."""
    if plan.imbalance > plan.ep:
        raise ConfigError(source, "imbalance", plan.imbalance,
                          f"at most ep = {plan.ep}: the busiest of {plan.ep} expert ranks gets at "
                          f"most all the tokens, {plan.ep} x the mean")
    if plan.etp not in (0, 1, plan.tp):
        as_tp = f" or {plan.tp}" if plan.tp > 1 else ""
        raise ConfigError(source, "etp", plan.etp, f"0{as_tp} (experts split over tp = {plan.tp} "
                          "like the other weights) or 1 (experts whole, tp folded into ep)")
    if not shape.experts:
        # An expert setting on a dense model would be accepted and do nothing.
        for name, value, default in (("ep", plan.ep, 1), ("etp", plan.etp, 0),
                                     ("dispatcher", plan.dispatcher, "alltoall")):
            if value != default:
                raise ConfigError(source, name, value,
                                  f"{default} (left out): the model has no routed experts")
    if plan.ep == 1:
        return
    if expert_tp(plan) == 1 < plan.tp:
        if (plan.tp * plan.dp_cp) % plan.ep:
            raise ConfigError(source, "ep", plan.ep,
                              f"a divisor of tp x dp x cp (etp=1 folds tp into the expert ranks): "
                              f"{plan.tp * plan.dp_cp} / ep {plan.ep} = "
                              f"{plan.tp * plan.dp_cp / plan.ep:g}")
    elif plan.dp % plan.ep:
        raise ConfigError(source, "ep", plan.ep,
                          f"a divisor of dp (ep is carved out of the data-parallel ranks): "
                          f"dp {plan.dp} / ep {plan.ep} = {plan.dp / plan.ep:g}")
    if shape.experts % plan.ep:
        raise ConfigError(source, "ep", plan.ep,
                          f"a divisor of the model's experts = {shape.experts} "
                          f"({shape.experts} / {plan.ep} = {shape.experts / plan.ep:g})")


def chunk_blocks(layers: int, chunks: int) -> list[int] | None:
    """Blocks per virtual stage without `stages=` (`dojo.plan.stages.default_split`)."""
    return default_split(layers, chunks)


def plan_split(plan: Plan, layers: int) -> list[int] | None:
    """Blocks per virtual stage of `plan` over `layers` blocks: its `stages`, else the default
    split; None if neither exists (`validate_plan` refuses such a plan)."""
    return split_blocks(plan.stages, layers, plan.pp * plan.interleave)


def microbatches(plan: Plan, batch: int) -> int:
    """Micro-batches each pipeline processes per step."""
    return max(1, math.ceil(batch / (plan.dp * plan.mb)))
