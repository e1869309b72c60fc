"""torch.compile(model, backend="dojo"): gradients equal eager, simulated time recorded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dojo.errors import DojoError


@pytest.fixture()
def backend():  # type: ignore[no-untyped-def]
    import dojo.runtime.backend as be

    be.reset()
    torch._dynamo.reset()
    yield be
    be.reset()
    torch._dynamo.reset()


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_runtime_backend_fp32_matches_eager_and_records_simulation(backend) -> None:  # type: ignore[no-untyped-def]
    x = torch.randn(3, 8)
    eager, compiled = _mlp(), _mlp()
    eager(x).square().sum().backward()
    torch.compile(compiled, backend="dojo")(x).square().sum().backward()
    for a, b in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7)
    sims = backend.last_simulations()
    assert len(sims) == 1 and sims[0].step_time_s > 0
    assert sims[0].program.plan.precision == "fp32"


def test_runtime_backend_bf16_rounds_like_policy_layers(backend) -> None:  # type: ignore[no-untyped-def]
    from dojo.numerics import apply_policy

    backend.configure(precision="bf16")
    x = torch.randn(3, 8)
    reference = apply_policy(_mlp(), "bf16")  # the numerics package's own policy layers
    out = torch.compile(_mlp(), backend="dojo")(x)
    torch.testing.assert_close(out, reference(x), rtol=0, atol=0)
    assert out.ne(_mlp()(x)).any()  # and it is not plain fp32
    # bf16 matmuls run faster than fp32 on a D1 (1024 vs 64 TFLOP/s... per the spec data)
    assert backend.last_simulations()[0].program.plan.precision == "bf16"


def test_runtime_backend_refuses_uncovered_op(backend) -> None:  # type: ignore[no-untyped-def]
    backend.configure(precision="cfp8")
    with pytest.raises(Exception) as info:
        torch.compile(nn.Conv1d(2, 2, 3), backend="dojo")(torch.randn(1, 2, 8))
    assert isinstance(info.value, DojoError) or "conv1d" in str(info.value)
    assert "cfp8" in str(info.value) and "conv1d" in str(info.value)


def test_runtime_backend_times_the_plans_fusion(backend) -> None:  # type: ignore[no-untyped-def]
    """The backend compiles the work the session would: `fusion=none` (eager, one kernel per
    op) launches every vector op on its own, so it can never be faster than `fusion=full`,
    and with ReLU between the linears it is strictly slower by at least one launch."""
    from dojo.sim.costs import load_calibration

    x = torch.randn(3, 8)
    steps = {}
    for fusion in ("full", "none"):
        backend.reset()
        torch._dynamo.reset()
        backend.configure(system="h100-cluster:1", plan=f"dp=1,fusion={fusion}")
        torch.compile(_mlp(), backend="dojo")(x).square().sum().backward()
        sims = backend.last_simulations()
        assert sims[0].program.plan.fusion == fusion
        steps[fusion] = sims[0].step_time_s
    assert steps["none"] >= steps["full"] + load_calibration("h100").launch_s * (1 - 1e-9)
