"""gpt's tied embedding under pp = 2: the all-reduce the ranks run between the first and the
last stage is the program's `tied` collective (`compiler.program._tied_comm`).

Reference: the ranks' own calls, counted by wrapping torch.distributed.all_reduce during one
step (the group's ranks and the bytes of the buffer), and the closed form V x H / tp FP32
elements of the vocabulary-parallel table's gradient; the runtime's group is each (dp, tp)
rank's first and last stage (`runtime.mesh.axis_groups`).
"""

from __future__ import annotations

from typing import Any

from dojo.runtime import Job, Trainer, launch, simulate_job
from dojo.runtime.job import build_bundle, dumps_program


def _step_worker(rank: int, world: int, job: Job, program: bytes) -> list[tuple[tuple[int, ...],
                                                                             int]]:
    """(group ranks, bytes) of every all-reduce this rank runs in one step."""
    import pickle

    import torch.distributed as dist

    seen: list[tuple[tuple[int, ...], int]] = []
    call = dist.all_reduce

    def counted(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        group = kwargs.get("group", args[1] if len(args) > 1 else None)
        ranks = tuple(dist.get_process_group_ranks(group)) if group is not None \
            else tuple(range(world))
        seen.append((ranks, tensor.numel() * tensor.element_size()))
        return call(tensor, *args, **kwargs)

    trainer = Trainer(pickle.loads(program), build_bundle(job), seed=job.seed)
    dist.all_reduce = counted
    try:
        trainer.step()
    finally:
        dist.all_reduce = call
    return seen


def test_the_ranks_tied_all_reduce_is_the_programs() -> None:
    job = Job(model="gpt", plan="tp=2,pp=2,mb=1,precision=fp32", batch=2, seq=8, steps=1,
              overrides={"layers": 4})
    program = simulate_job(job).program
    config = build_bundle(job).config
    tp, pp = program.plan.tp, program.plan.pp
    assert program.tied is not None and program.tied.kind == "all_reduce"
    assert program.tied.nbytes == int(config.vocab) * int(config.hidden) / tp * 4
    for rank, seen in enumerate(launch(_step_worker, tp * pp, (job, dumps_program(program)),
                                       timeout_s=90)):
        pair = (rank % tp, rank % tp + (pp - 1) * tp)   # first and last stage of tp rank r
        tied = [nbytes for ranks, nbytes in seen if ranks == pair]
        assert tied == [program.tied.nbytes], (rank, seen)
