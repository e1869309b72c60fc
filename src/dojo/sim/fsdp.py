"""The copies PyTorch FSDP issues around ZeRO 3's collectives, per micro-batch (`fsdp=1|2`).

ZeRO 3's collectives are timed in `simulate._zero3_time` (a gather before every pass, a
reduce-scatter after the backward). With `fsdp=0` (the default) that is all: an implementation
that gathers into and reduces out of the parameters' own storage. PyTorch's two FSDPs also run
bandwidth-bound kernels on the GPU around each collective, over every unsharded parameter of
each wrapped module (one module per block, plus the root's embedding and head), per
micro-batch. Bytes per element, with w the bytes of a gathered weight (2 under bf16), r the
reduction's (`grad_bytes`: 4 when grad_reduce is FP32), s the sharded master's (4; under fp32,
the weight itself), n = dp x cp ranks, P a device's unsharded parameters and S = P / n its shard:

- `fsdp=1`, FSDP1 (`torch.distributed.fsdp.FullyShardedDataParallel`, torch 1.13 to 2.x;
  `_runtime_utils._post_backward_hook`, `flat_param.py`, `_comm_hooks/default_hooks.py`):
  before each gather the FP32 shard is cast to the low-precision shard it sends (S (s + w),
  when s != w). The module's parameters are views of its FlatParameter, taken with
  `torch.split` in forward (`_get_unflat_views`), so autograd's `SplitWithSizesBackward`
  concatenates their gradients into the FlatParameter's: P (w + w). The post-backward hook then
  casts that unsharded gradient to the reduction dtype (`flat_param.grad.to(_reduce_dtype)`,
  P (w + r) when r != w) and `reduce_scatter_hook` divides it in place by the pre-divide factor
  (`DefaultState._get_gradient_predivide_factor`: f doubled from 1 while it divides n and
  f^2 < n, so > 1 for n >= 2, and not always a divisor of n: P (r + r)); after the
  reduce-scatter it divides the shard by n / f when that is > 1 (S (r + r)), casts it to
  the master dtype (`_cast_grad_to_param_dtype`, S (r + s) when r != s) and, from the step's
  second micro-batch on, adds it to `_saved_grad_shard` (S 3 s).
- `fsdp=2`, FSDP2 (`fully_shard`, `_fsdp_collectives.py`): each gather copies the shard into
  the all-gather input (`torch._foreach_copy_`, S (s + w)) and copies the gathered buffer out
  into the unsharded parameters (`split_with_sizes_copy`, P (w + w)); the backward copies the
  gradients into the reduce-scatter input at the reduction dtype (`torch._chunk_cat`,
  P (w + r)); FP32 and BF16 reductions divide inside NCCL (`ReduceOp.AVG`,
  `_get_gradient_divide_factors`), so no division kernel; then the shard's cast (S (r + s)
  when r != s) and accumulation (S 3 s) as FSDP1's.

Every pass gathers once (forward; backward, whose recompute under checkpointing runs on the
same gather), as `_zero3_time` counts. The kernels run on the compute stream or beside it on
FSDP's own streams; concurrent with the next module's GEMMs they compete for the same SMs and
memory, so they are charged in full to the task (the convention for overlapped NCCL kernels,
docs/validation.md). Each kernel runs once per wrapped module at its bandwidth-bound time
(`DeviceModel.vector_time`: HBM bandwidth x vector efficiency, plus its launch).
"""

from __future__ import annotations

from dojo.compiler.program import PRECISION_BYTES, Program, grad_bytes
from dojo.sim.costs import DeviceModel
from dojo.sim.gradacc import copy_params


def predivide_factor(ranks: int) -> int:
    """FSDP1's gradient pre-divide factor over `ranks` (its `reduce_scatter_hook` divides the
    unsharded gradient by it, the shard by ranks / it): doubled from 1 while it divides ranks
    and its square stays below ranks."""
    factor = 1
    while ranks % factor == 0 and ranks > factor * factor:
        factor *= 2
    return factor


def _kernels(program: Program, phase: str) -> list[tuple[float, float]]:
    """(bytes per unsharded parameter, bytes per shard element) of each kernel FSDP runs in one
    micro-batch's `phase` ("F" or "B"), in the order it runs them."""
    plan = program.plan
    sizes = PRECISION_BYTES[plan.precision]
    w, r = float(sizes["weights"]), grad_bytes(plan)
    s = float(sizes["master"] or sizes["weights"])
    n = plan.dp_cp
    out: list[tuple[float, float]] = []
    if plan.fsdp == 2 or s != w:                  # the shard into what the gather sends
        out.append((0.0, s + w))
    if plan.fsdp == 2:
        out.append((w + w, 0.0))                  # the gathered buffer out into parameters
    if phase == "F":
        return out
    if plan.fsdp == 1:
        out.append((w + w, 0.0))                  # the views' gradients into the FlatParameter
        if r != w:
            out.append((w + r, 0.0))              # cast to the reduction dtype
        pre = predivide_factor(n)
        if pre > 1:
            out.append((r + r, 0.0))              # pre-divide, unsharded
        if n / pre > 1:
            out.append((0.0, r + r))              # post-divide, the shard
    else:
        out.append((w + r, 0.0))                  # chunk_cat into the reduce-scatter input
    if r != s:
        out.append((0.0, r + s))                  # the shard to the master dtype
    acc = (program.microbatches - 1) / program.microbatches
    if acc > 0:
        out.append((0.0, 3 * s * acc))            # into the step's sharded gradient
    return out


def fsdp_time(program: Program, dev: DeviceModel, virtual: int, phase: str) -> float:
    """Seconds FSDP's copies add to one micro-batch's `phase` ("F" forward, "B" backward) of
    virtual stage `virtual`: 0 with fsdp=0; otherwise each kernel of `_kernels` once per
    wrapped module of the chunk (its blocks, plus the root's embedding or head sections), the
    chunk's parameters shared evenly among them."""
    plan = program.plan
    if not plan.fsdp:
        return 0.0
    params = copy_params(program, virtual)
    if params <= 0:
        return 0.0
    chunk = program.chunks[virtual]
    edge = chunk.index == 0 or chunk.index == len(program.chunks) - 1
    units = max(1, chunk.blocks + (1 if edge else 0))
    shard = params / plan.dp_cp
    return sum(units * dev.vector_time((params * full + shard * part) / units)
               for full, part in _kernels(program, phase))
