"""Gradient accumulation across micro-batches: where each micro-batch's gradients are summed.

`grad_acc=inplace` (the default): the backward adds each micro-batch's weight gradients into
the reduction buffer itself (autograd's accumulation into `.grad`, Megatron-LM's fused wgrad
into `main_grad`), so accumulation costs no pass of its own.

`grad_acc=copy`: DeepSpeed's BF16_Optimizer (deepspeed/runtime/bf16_optimizer.py, the path of
its pipeline engine with bf16 and ZeRO stage 0/1). The backward writes bf16 gradients into the
parameters' own `.grad` (cleared before each micro-batch, `clear_lp_grads`), and after every
micro-batch's backward `update_hp_grads` adds them into the FP32 gradient buffer:
``hp_grad.add_(lp.grad.to(float32))``, two kernels per tensor: the cast reads 2 and writes 4
bytes per element, the add reads the cast copy and the FP32 buffer and writes the buffer back
(4 + 4 + 4). The pipeline engine calls it after each backward pass (`_exec_backward_pass`; on
the last stage through `optimizer.backward`), so it lengthens every backward task by one pass
over the stage's parameters. The gradient sync that follows at zero=1 is the BF16_Optimizer's
too (`compiler.program.grad_sync_kind`, timed in `sim/stepend.py` and `sim/overlap.py`): an
all-reduce of the whole FP32 buffer over dp (`buffered_allreduce_fallback`), then the ZeRO-1
all-gather of the bf16 parameters, where ZeRO 1 as published reduce-scatters the gradients.
The BF16_Optimizer shards only the optimizer state, so copy needs zero 0 or 1.
"""

from __future__ import annotations

from dojo.compiler.experts import param_groups
from dojo.compiler.program import Program
from dojo.sim.costs import DeviceModel

# bytes per parameter of `update_hp_grads`'s two kernels: the cast reads bf16 (2) and writes
# FP32 (4); the add reads the cast copy (4) and the FP32 buffer (4) and writes the buffer (4)
CAST_BYTES, ADD_BYTES = 2 + 4, 4 + 4 + 4


def copy_params(program: Program, virtual: int) -> float:
    """Parameters one device of virtual stage `virtual` holds (after the tp and ep splits): its
    stage's, shared among the stage's chunks by their whole parameter counts."""
    stage = virtual % program.plan.pp
    chunks = program.device_chunks(stage)
    whole = sum(c.params for c in chunks)
    held = sum(h for h, _, _ in param_groups(program, stage))
    return held * program.chunks[virtual].params / whole if whole else 0.0


def accumulate_time(program: Program, dev: DeviceModel, virtual: int) -> float:
    """Seconds `grad_acc` adds to one micro-batch's backward of virtual stage `virtual`: 0 when
    inplace; with copy, the cast and the add over its parameters (`CAST_BYTES`, `ADD_BYTES`
    per parameter, one FLOP each for the add), each a bandwidth-bound kernel with its launch."""
    if program.plan.grad_acc != "copy":
        return 0.0
    params = copy_params(program, virtual)
    if params <= 0:
        return 0.0
    cast = dev.vector_time(params * CAST_BYTES)
    add = dev.vector_time(params * ADD_BYTES, params)
    return cast + add
