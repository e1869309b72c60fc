"""Bad input gives one clear DojoError naming the thing at fault, and never a hang."""

from __future__ import annotations

import time

import pytest
from torch import nn

from dojo.errors import ConfigError, DojoError
from dojo.runtime import (
    Job,
    RankError,
    Trainer,
    check_policy_coverage,
    run_distributed,
    simulate_job,
)
from dojo.runtime.job import build_bundle


def test_runtime_policy_refuses_uncovered_layer() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Conv1d(8, 8, 3))
    check_policy_coverage(model, "fp32")  # fp32 rounds nothing: anything goes
    with pytest.raises(DojoError, match=r"cfp8.*layer '1' \(Conv1d\)"):
        check_policy_coverage(model, "cfp8")


def test_runtime_unknown_policy_lists_known() -> None:
    job = Job(model="mlp", plan="dp=1,precision=fp16", batch=2)
    with pytest.raises(DojoError, match="unknown precision policy 'fp16'; known: fp32, bf16"):
        Trainer(simulate_job(job).program, build_bundle(job))


def test_runtime_plan_that_does_not_divide_the_model() -> None:
    job = Job(model="gpt", plan="pp=5,precision=fp32", batch=5, seq=8, overrides={"layers": 4})
    with pytest.raises(ConfigError, match=r"pp.*divides neither 4"):
        simulate_job(job)


def test_runtime_tp_on_model_without_layout_is_named() -> None:
    job = Job(model="mlp", plan="tp=2,precision=fp32", batch=2)
    with pytest.raises(RankError, match=r"rank \d: DojoError: tensor parallelism .* Sequential"):
        run_distributed(job, timeout_s=10)


def test_runtime_dead_rank_is_named_without_hang() -> None:
    job = Job(model="gpt", plan="dp=2,precision=fp32", batch=4, seq=8, overrides={"layers": 4},
              steps=4, die_at=(1, 2))
    start = time.monotonic()
    with pytest.raises(RankError, match="rank 1: worker process died with exit code 17"):
        run_distributed(job, timeout_s=5)
    assert time.monotonic() - start < 15
