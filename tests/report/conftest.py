"""Small simulated steps shared by the report tests (one capture of a 4-block GPT-2, ~3 s)."""

from __future__ import annotations

import pytest

from dojo.plan.plan import parse_plan
from dojo.sim.session import Simulated, simulate_model

# A 4-block GPT-2 at sequence 128 on 8 H100s: small enough to capture in a few seconds, large
# enough for tensor, data and pipeline parallelism with interleaving.
MODEL = ("gpt2-small", {"layers": 4})


def _simulate(plan: str, batch: int = 8) -> Simulated:
    name, overrides = MODEL
    return simulate_model(name, overrides, "h100-cluster", parse_plan(plan), batch=batch,
                          seq=128, devices=8)


@pytest.fixture(scope="session")
def interleaved() -> Simulated:
    """dp 2 x tp 2 x pp 2, two chunks per device, 4 micro-batches."""
    return _simulate("dp=2,tp=2,pp=2,mb=1,interleave=2,schedule=interleaved")


@pytest.fixture(scope="session")
def deep() -> Simulated:
    """pp 4 x dp 2, plain 1F1B, 8 micro-batches per replica, no tensor parallelism."""
    return _simulate("dp=2,tp=1,pp=4,mb=1", batch=16)
