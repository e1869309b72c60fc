"""The pipeline executes exactly the task order the simulator times (`dojo.sim.pipeline.order`),
for GPipe, 1F1B and Megatron's interleaved 1F1B, and still equals single-process eager PyTorch.

The reference order is the simulator's function, called here independently of the runtime; each
rank records the (kind, micro-batch, chunk) of every task it ran in the last step. Parity
tolerance as in test_runtime_parity: rtol 1e-5, atol 1e-6 (FP32 reordering only).
"""

from __future__ import annotations

import pytest

from dojo.plan.plan import parse_plan
from dojo.runtime import Job
from dojo.runtime.mesh import coords_of
from dojo.sim.pipeline import order

from .reference import check_parity

RTOL, ATOL = 1e-5, 1e-6
GPT = {"layers": 4, "optimizer": "sgd", "lr": 0.05}


def _check_order(job: Job, results: list[dict]) -> None:
    plan = parse_plan(job.plan)
    micro = job.batch // (plan.dp * plan.mb)
    for res in results:
        stage = coords_of(res["rank"], plan).pp
        expected = order(plan.schedule, stage, plan.pp, micro, plan.interleave)
        assert res["executed"] == expected, f"rank {res['rank']} stage {stage}"


@pytest.mark.parametrize("plan", [
    "pp=2,interleave=2,mb=1,precision=fp32",           # Megatron interleaved 1F1B, 4 micro
    "pp=2,mb=1,schedule=1f1b,precision=fp32",
    "pp=2,mb=1,schedule=gpipe,precision=fp32",
    "pp=2,interleave=2,mb=1,schedule=gpipe,precision=fp32",
])
def test_runtime_pipeline_runs_simulated_order_and_matches_eager(plan: str) -> None:
    job = Job(model="gpt", plan=plan, batch=4, seq=8, overrides=GPT, steps=3, return_state=True)
    _check_order(job, check_parity(job, RTOL, ATOL))


def test_runtime_interleaved_order_differs_from_gpipe() -> None:
    # Guards the test above against a vacuous pass: the interleaved order is not GPipe's.
    assert order("interleaved", 0, 2, 4, 2) != order("gpipe", 0, 2, 4, 2)
    assert order("1f1b", 0, 2, 4, 1) != order("gpipe", 0, 2, 4, 1)


@pytest.mark.slow
@pytest.mark.parametrize("plan", [
    "pp=4,interleave=2,mb=1,precision=fp32",           # 8 micro-batches, 8 virtual stages
    "dp=2,pp=2,interleave=2,tp=2,mb=1,precision=fp32",
])
def test_runtime_eight_rank_interleaved_order_and_parity(plan: str) -> None:
    job = Job(model="gpt", plan=plan, batch=8, seq=8, overrides={**GPT, "layers": 8}, steps=3,
              return_state=True)
    _check_order(job, check_parity(job, RTOL, ATOL))
