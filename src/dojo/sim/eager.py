"""What an eager step costs outside its captured ops, per pipeline stage (the `cpu` device).

`DeviceModel.host_step_time(tensors, microbatches)` prices the host work of an eager step that
no captured op holds: the optimizer step's fixed part, its part per parameter tensor with
`zero_grad`, and one accumulation add per tensor per extra micro-batch. Its tensor count is one
device's: `stage_param_tensors` lays the sections' counts (`dojo.capture.params`) over the
program's chunks as `compiler.program` lays their parameters.
"""

from __future__ import annotations

from collections.abc import Mapping

from dojo.compiler.program import Program


def stage_param_tensors(program: Program, stage: int,
                        sections: Mapping[str, int] | None = None) -> int:
    """Parameter tensors one device of pipeline `stage` holds and updates: the 'pre' section's
    on the device of virtual chunk 0, `sections['block']` per block of each of its chunks, the
    'post' section's on the device of the last chunk. A tp shard is one tensor per rank, as is
    every tensor a ZeRO optimizer walks (its loop still runs over all of them)."""
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
            count += sections.get("post", 0)
    return count
