"""Vocabulary-parallel embedding, tied LM head and cross entropy (tp > 1) against PyTorch eager,
and the collectives a rank issues per micro-batch against the simulated program's count.

Reference: one single-process eager step of the whole model (`F.cross_entropy` over the whole
vocabulary). Each rank's slices are placed back by their `shards` indices into whole-model
tensors, which must equal the eager loss and every gradient (rtol 1e-5, atol 1e-6: the split
only reorders FP32 sums; a missed mask, a wrong softmax normaliser or a head gradient left
partial moves them by 1e-3 or more). The collectives are counted by wrapping torch.distributed's
calls in the ranks, not read from the code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from dojo.runtime import Job, Trainer, launch, simulate_job
from dojo.runtime.job import build_bundle, dumps_program

from .reference import eager_run

RTOL, ATOL = 1e-5, 1e-6
COLLECTIVES = ("all_reduce", "all_gather_single", "reduce_scatter_single")


def _step_worker(rank: int, world: int, job: Job, program: bytes) -> dict[str, Any]:
    """One step; this rank's loss, gradients by local name and their slices."""
    import pickle

    trainer = Trainer(pickle.loads(program), build_bundle(job), seed=job.seed)
    loss = trainer.step()
    return {"loss": loss, "grads": trainer.local_grads(),
            "shards": {n: (s.source, s.dim, s.index) for n, s in trainer.shards.items()}}


def _gathered(results: list[dict[str, Any]], ref: dict[str, torch.Tensor]
              ) -> dict[str, torch.Tensor]:
    """Whole-model gradients assembled from every rank's slices (NaN where none landed)."""
    out = {n: torch.full_like(t, float("nan")) for n, t in ref.items()}
    for res in results:
        for local, grad in res["grads"].items():
            source, dim, index = res["shards"].get(local, (local, None, None))
            if dim is None:
                out[source].copy_(grad)
            else:
                out[source].index_copy_(dim, index, grad)
    return out


@pytest.mark.parametrize("overrides", [{}, {"vocab": 511}],
                         ids=["small", "odd-vocab"])  # 511 over 2 ranks: 255 + 256 rows
def test_vocab_parallel_step_equals_eager(overrides: dict[str, Any]) -> None:
    job = Job(model="gpt", plan="tp=2,precision=fp32", batch=2, steps=1, overrides=overrides)
    ref = eager_run(job)
    results = launch(_step_worker, 2, (job, dumps_program(simulate_job(job).program)),
                     timeout_s=60)
    wte = [r["shards"]["wte.weight"][2] for r in results]
    assert len(wte[0]) + len(wte[1]) == build_bundle(job).config.vocab  # split by rows
    for res in results:
        assert res["loss"] == pytest.approx(ref["losses"][0], rel=RTOL, abs=ATOL)
    grads = _gathered(results, ref["grads"])
    for name, expected in ref["grads"].items():
        torch.testing.assert_close(grads[name], expected, rtol=RTOL, atol=ATOL,
                                   msg=lambda m, n=name: f"grad {n}: {m}")


def _counting(phase: list[str], seen: dict[str, list[tuple[str, int]]]) -> None:
    """Wrap torch.distributed's collectives: each call appends (kind, bytes of the whole
    tensor: an all-reduce's buffer, a gather's output, a reduce-scatter's input) to seen[phase]."""
    import torch.distributed as dist

    def wrap(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        kind = name.removesuffix("_single")

        def counted(*args: Any, **kwargs: Any) -> Any:
            whole = args[1] if kind == "reduce_scatter" else args[0]
            seen.setdefault(phase[0], []).append((kind, whole.numel() * whole.element_size()))
            return call(*args, **kwargs)

        return counted

    for name in COLLECTIVES:
        setattr(dist, name, wrap(name, getattr(dist, name)))


def _count_worker(rank: int, world: int, job: Job, program: bytes) -> dict[str, Any]:
    """The collectives of one micro-batch's forward (model and loss) and backward."""
    import pickle

    trainer = Trainer(pickle.loads(program), build_bundle(job), seed=job.seed)
    inputs, targets = trainer.data.get(0)
    mb = trainer.plan.mb
    phase: list[str] = ["forward"]
    seen: dict[str, list[tuple[str, int]]] = {}
    _counting(phase, seen)
    trainer.model.train()
    loss = trainer.loss_fn(trainer.model(*(x[:mb] for x in inputs)), *(t[:mb] for t in targets))
    phase[0] = "backward"
    loss.backward()
    return seen


@pytest.mark.parametrize("model", ["gpt", "llama"])
@pytest.mark.parametrize("plan", ["tp=2,precision=fp32", "tp=2,sp=on,precision=fp32"])
def test_collectives_per_micro_batch_are_the_programs(model: str, plan: str) -> None:
    job = Job(model=model, plan=plan, batch=2, steps=1, system="cpu")
    program = simulate_job(job).program
    (chunk,) = program.chunks

    def expected(comms: Any) -> list[tuple[str, int]]:
        return sorted((c.kind, int(c.nbytes)) for c in comms)

    for seen in launch(_count_worker, 2, (job, dumps_program(program)), timeout_s=60):
        assert sorted(seen["forward"]) == expected(chunk.tp_forward)
        assert sorted(seen["backward"]) == expected(chunk.tp_backward)
    if "sp" not in plan:  # Megatron's count, by hand: embedding, 2 per block, loss's max + sums
        # (llama's untied head: the same, its column-parallel output layer has f on its input)
        layers = int(build_bundle(job).config.layers)
        assert (len(chunk.tp_forward), len(chunk.tp_backward)) == (1 + 2 * layers + 2,
                                                                   2 * layers + 1)
