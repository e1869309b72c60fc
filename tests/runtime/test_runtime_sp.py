"""Sequence parallelism (sp=on) executes: blocks see (B, S/tp, H) slices, and training equals
single-process eager PyTorch (rtol 1e-5, atol 1e-6: sp only reorders FP32 sums, as tp does).

A wrong slice, a missing reduce-scatter/all-gather adjoint or a LayerNorm gradient left as a
partial sum over tp moves parameters by 1e-3 or more after a few steps.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dojo.runtime import Job, Trainer, launch, simulate_job
from dojo.runtime.job import build_bundle, dumps_program

from .reference import check_parity

RTOL, ATOL = 1e-5, 1e-6
GPT = {"layers": 4, "optimizer": "sgd", "lr": 0.05}


@pytest.mark.parametrize("plan", [
    "tp=2,sp=on,precision=fp32",
    "tp=2,sp=on,mb=1,precision=fp32",                  # gradient accumulation
    "tp=2,pp=2,sp=on,mb=1,precision=fp32",             # sliced activations between stages
])
def test_runtime_sequence_parallel_matches_eager(plan: str) -> None:
    job = Job(model="gpt", plan=plan, batch=4, seq=8, overrides=GPT, steps=3, return_state=True)
    check_parity(job, RTOL, ATOL)


@pytest.mark.slow
@pytest.mark.parametrize("plan", ["dp=2,tp=2,sp=on,precision=fp32",
                                  "tp=4,pp=2,sp=on,mb=1,precision=fp32"])
def test_runtime_sequence_parallel_larger_meshes_match_eager(plan: str) -> None:
    job = Job(model="gpt", plan=plan, batch=8, seq=8, overrides=GPT, steps=3, return_state=True)
    check_parity(job, RTOL, ATOL)


def shapes_worker(rank: int, world: int, job: Job, program: bytes) -> dict[str, Any]:
    """Record what a block and its LayerNorm / qkv / row-parallel output see in one step."""
    import pickle

    trainer = Trainer(pickle.loads(program), build_bundle(job), seed=job.seed)
    seen: dict[str, Any] = {}
    block: Any = trainer.model.blocks[0]  # type: ignore[index]

    def record(name: str) -> Any:
        def hook(_module: Any, args: Any, out: torch.Tensor) -> None:
            seen.setdefault(name, (tuple(args[0].shape), tuple(out.shape)))

        return hook

    for name, module in (("block_in", block), ("ln1", block.ln1), ("qkv", block.attn.qkv),
                         ("proj", block.attn.proj)):
        module.register_forward_hook(record(name))
    trainer.step()
    return seen


def test_runtime_sequence_parallel_shards_the_sequence() -> None:
    job = Job(model="gpt", plan="tp=2,sp=on,mb=2,precision=fp32", batch=2, seq=8, overrides=GPT)
    program = dumps_program(simulate_job(job).program)
    hidden = int(build_bundle(job).config.hidden)
    for seen in launch(shapes_worker, 2, (job, program), timeout_s=30):
        assert seen["block_in"] == ((2, 4, hidden), (2, 4, hidden))  # S/tp tokens per rank
        assert seen["ln1"][1] == (2, 4, hidden)
        assert seen["qkv"][0] == (2, 8, hidden)  # all-gathered before the column split
        assert seen["proj"][1] == (2, 4, hidden)  # reduce-scattered after the row split


def test_runtime_sequence_parallel_refuses_indivisible_sequence() -> None:
    from dojo.runtime import RankError

    job = Job(model="gpt", plan="tp=2,sp=on,precision=fp32", batch=2, seq=7, overrides=GPT)
    with pytest.raises(RankError, match=r"seq 7 is not divisible"):
        launch(shapes_worker, 2, (job, dumps_program(simulate_job(job).program)), timeout_s=30)


def test_runtime_sequence_parallel_needs_tp() -> None:
    # sp needs tp > 1: refused (ConfigError) before any rank starts.
    from dojo.errors import ConfigError

    with pytest.raises(ConfigError, match="sp"):
        simulate_job(Job(model="gpt", plan="sp=on,precision=fp32", batch=2, seq=8,
                         overrides=GPT))
