"""Activation recompute (recompute=full|selective) executes: backward reruns the block (full) or
the attention core (selective), fewer activations are saved, and training equals eager PyTorch
(rtol 1e-5, atol 1e-6; recomputation repeats the same FP32 ops, so it reorders nothing).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dojo.errors import DojoError
from dojo.runtime import Job, Trainer, simulate_job
from dojo.runtime.job import build_bundle

from .reference import check_parity, eager_run

RTOL, ATOL = 1e-5, 1e-6
GPT = {"layers": 4, "optimizer": "sgd", "lr": 0.05, "attention": "math"}


def _trainer(plan: str) -> tuple[Job, Trainer]:
    job = Job(model="gpt", plan=plan, batch=2, seq=8, overrides=GPT, steps=3)
    return job, Trainer(simulate_job(job).program, build_bundle(job))


def _whole_name(name: str, trainer: Trainer) -> str:
    return trainer.shards[name].source if name in trainer.shards else name


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_runtime_recompute_matches_eager(mode: str) -> None:
    job, trainer = _trainer(f"dp=1,recompute={mode},precision=fp32")
    ref = eager_run(job)
    losses = [trainer.step() for _ in range(job.steps)]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref["losses"]),
                               rtol=RTOL, atol=ATOL)
    state = trainer.local_state()
    assert {_whole_name(n, trainer) for n in state} == set(ref["params"])
    for name, value in state.items():
        torch.testing.assert_close(value, ref["params"][_whole_name(name, trainer)],
                                   rtol=RTOL, atol=ATOL)


def _one_step_counts(trainer: Trainer) -> dict[str, Any]:
    """Calls of blocks[0].ln1 and the shapes of activations saved for backward in one step."""
    calls = [0]
    block: Any = trainer.model.blocks[0]  # type: ignore[index]
    block.ln1.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    saved: list[tuple[int, ...]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trainer.step()
    return {"ln1_calls": calls[0], "saved": saved}


def test_runtime_recompute_reruns_and_saves_less() -> None:
    base = _one_step_counts(_trainer("dp=1,mb=2,precision=fp32")[1])
    full = _one_step_counts(_trainer("dp=1,mb=2,recompute=full,precision=fp32")[1])
    selective = _one_step_counts(_trainer("dp=1,mb=2,recompute=selective,precision=fp32")[1])
    assert base["ln1_calls"] == 1 and full["ln1_calls"] == 2  # forward, then again in backward
    assert selective["ln1_calls"] == 1
    scores = (2, 4, 8, 8)  # (B, heads, S, S): softmax and dropout outputs of the core
    assert scores in base["saved"] and scores not in selective["saved"]
    assert len(full["saved"]) < len(selective["saved"]) < len(base["saved"])


@pytest.mark.parametrize("plan", ["tp=2,recompute=selective,precision=fp32",
                                  "pp=2,mb=1,recompute=full,precision=fp32"])
def test_runtime_recompute_distributed_matches_eager(plan: str) -> None:
    job = Job(model="gpt", plan=plan, batch=4, seq=8, overrides=GPT, steps=3, return_state=True)
    check_parity(job, RTOL, ATOL)


def test_runtime_recompute_needs_blocks() -> None:
    job = Job(model="mlp", plan="dp=1,recompute=full,precision=fp32", batch=2)
    with pytest.raises(DojoError, match="recompute=full needs a block-structured model"):
        Trainer(simulate_job(job).program, build_bundle(job))
