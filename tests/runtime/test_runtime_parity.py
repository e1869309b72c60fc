"""Partitioned fp32 runs (dp, tp, pp, micro-batches, schedules) equal single-process eager
PyTorch after several SGD-with-momentum steps: losses, final parameters and last gradients.

Tolerance: rtol 1e-5, atol 1e-6. Partitioning only reorders FP32 sums (all-reduce of partial
matmuls, averaged micro-batch gradients), which moves results by a few ulps (~1e-7 relative); a
wrong split, a missed reduction or a skipped micro-batch moves them by 1e-3 or more.
"""

from __future__ import annotations

import pytest
import torch

from dojo.runtime import Job, Trainer, simulate_job
from dojo.runtime.job import build_bundle

from .reference import check_parity, eager_run

RTOL, ATOL = 1e-5, 1e-6
# >= 3 identical blocks, so the capture sees a repeated block to cut. SGD with momentum: its
# update is linear in the gradient, so FP32 reordering stays at ulp level (Adam divides by
# sqrt(v) and turns ulp noise in near-zero gradients into lr-sized steps).
GPT = {"layers": 4, "optimizer": "sgd", "lr": 0.05}
MLP = {"optimizer": "sgd", "lr": 0.05}


def _check(job: Job) -> None:
    check_parity(job, RTOL, ATOL)


@pytest.mark.parametrize("plan", [
    "dp=2,precision=fp32",
    "tp=2,precision=fp32",
    "dp=2,tp=2,precision=fp32",
    "tp=2,pp=2,mb=1,precision=fp32",
    "dp=2,pp=2,mb=1,precision=fp32",
])  # pp alone (1f1b, gpipe, interleaved): test_runtime_schedule, which also checks the order
def test_runtime_gpt_partitioned_matches_eager(plan: str) -> None:
    _check(Job(model="gpt", plan=plan, batch=4, seq=8, overrides=GPT, steps=3,
               return_state=True))


@pytest.mark.slow
@pytest.mark.parametrize("plan", [
    "dp=2,tp=2,pp=2,mb=1,precision=fp32",
    "tp=4,pp=2,mb=1,precision=fp32",
    "dp=2,pp=4,mb=1,precision=fp32",
    "pp=4,mb=1,precision=fp32",
    "dp=8,mb=1,precision=fp32",
])
def test_runtime_gpt_eight_ranks_match_eager(plan: str) -> None:
    _check(Job(model="gpt", plan=plan, batch=8, seq=8, overrides=GPT, steps=3,
               return_state=True))


def test_runtime_mlp_dp_with_accumulation_matches_eager() -> None:
    _check(Job(model="mlp", plan="dp=2,mb=1,precision=fp32", batch=4, steps=3, overrides=MLP,
               return_state=True))


def test_runtime_single_process_accumulation_matches_eager() -> None:
    job = Job(model="gpt", plan="dp=1,mb=1,precision=fp32", batch=4, seq=8, overrides=GPT,
              steps=3)
    ref = eager_run(job)
    sim = simulate_job(job)
    trainer = Trainer(sim.program, build_bundle(job))
    losses = [trainer.step() for _ in range(job.steps)]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref["losses"]),
                               rtol=RTOL, atol=ATOL)
    for name, value in trainer.local_state().items():
        torch.testing.assert_close(value, ref["params"][name], rtol=RTOL, atol=ATOL)


def test_runtime_simulated_program_is_executed_program() -> None:
    job = Job(model="gpt", plan="dp=1,precision=fp32", batch=2, seq=8, overrides=GPT)
    sim = simulate_job(job)
    trainer = Trainer(sim.program, build_bundle(job))
    assert trainer.program is sim.program
    # and the executed pipeline cut is the program's: blocks per chunk sum to the model's blocks
    assert sum(c.blocks for c in trainer.program.chunks) == len(trainer.model.blocks)
