"""Single-process eager PyTorch: the reference every partitioned run is checked against."""

from __future__ import annotations

from typing import Any

import torch

from dojo.runtime import Batches, Job
from dojo.runtime.job import build_bundle


def eager_run(job: Job) -> dict[str, Any]:
    """Plain PyTorch training on the job's data: losses per step, final parameters and the last
    step's gradients, by the whole model's parameter names."""
    bundle = build_bundle(job)
    model = bundle.model
    optimizer = bundle.make_optimizer(model.parameters())
    data = Batches(bundle, job.batch, job.seed)
    losses = []
    for step in range(job.steps):
        inputs, targets = data.get(step)
        optimizer.zero_grad(set_to_none=True)
        loss = bundle.loss_fn(model(*inputs), *targets)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return {"losses": losses, "params": params, "grads": grads}


def whole_name(local: str, shards: dict[str, Any]) -> tuple[str, int | None, list[int] | None]:
    """The whole-model name of a local parameter and its slice (dim, indices), if sharded."""
    if local in shards:
        source, dim, index = shards[local]
        return source, dim, index
    return local, None, None


def compare_state(ref: dict[str, torch.Tensor], results: list[dict[str, Any]], key: str,
                  rtol: float, atol: float) -> set[str]:
    """Check every rank's local `key` tensors ("params" or "grads") against the reference
    slices; returns the whole-model names covered."""
    covered = set()
    for res in results:
        for local, value in res[key].items():
            name, dim, index = whole_name(local, res["shards"])
            expected = ref[name]
            if dim is not None and index is not None:
                expected = expected.index_select(dim, torch.tensor(index))
            where = f"{key} {name} rank {res['rank']}"
            torch.testing.assert_close(value, expected, rtol=rtol, atol=atol,
                                       msg=lambda m, w=where: f"{w}: {m}")
            covered.add(name)
    return covered


def check_parity(job: Job, rtol: float, atol: float, grads: bool = True) -> list[dict[str, Any]]:
    """Run `job` over its plan's ranks and check losses, every parameter and (with `grads`) the
    last gradients against `eager_run`; returns the per-rank results."""
    from dojo.runtime import run_distributed

    ref = eager_run(job)
    _, results = run_distributed(job, timeout_s=30)
    for res in results:
        torch.testing.assert_close(torch.tensor(res["losses"]), torch.tensor(ref["losses"]),
                                   rtol=rtol, atol=atol)
    covered = compare_state(ref["params"], results, "params", rtol, atol)
    if grads:
        compare_state(ref["grads"], results, "grads", rtol, atol)
    assert covered == set(ref["params"])  # every parameter lives on some rank
    return results
