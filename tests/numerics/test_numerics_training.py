"""Precision policies on real training: bf16 and cfp8 stay close to fp32; fp32 is plain PyTorch.

Margins (also in docs/numerics.md): after K seeded Adam steps the final full-data loss under a
policy must be within REL_MARGIN[policy] of the fp32 run's (relative), and every run must have
cut its initial loss by at least half, so a policy that stops learning cannot pass.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from dojo.numerics import apply_policy, remove_policy

STEPS = 80
REL_MARGIN = {"bf16": 0.03, "cfp8": 0.10}

Task = tuple[nn.Module, torch.Tensor, torch.Tensor, Callable[..., torch.Tensor]]


def _mlp_task(seed: int) -> Task:
    """Student-teacher regression: a 2-hidden-layer MLP learns a random tanh teacher."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 16, generator=g)  # [N, 16]
    w1, w2 = torch.randn(16, 32, generator=g) / 4, torch.randn(32, 1, generator=g) / 4
    y = torch.tanh(x @ w1) @ w2  # [N, 1]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 1))
    return model, x, y, nn.functional.mse_loss


def _cnn_task(seed: int) -> Task:
    """Classify which quadrant of a 12x12 noise image has the largest mean (4 classes)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 1, 12, 12, generator=g)  # [N, 1, 12, 12]
    quads = x.unfold(2, 6, 6).unfold(3, 6, 6).mean((-1, -2)).flatten(1)  # [N, 4]
    y = quads.argmax(1)  # [N]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(16 * 6 * 6, 4))
    return model, x, y, nn.functional.cross_entropy


TASKS = {"mlp": _mlp_task, "cnn": _cnn_task}


def _train(task: str, policy: str | None, seed: int = 0) -> tuple[float, float, nn.Module]:
    """(initial loss, final loss, model) after STEPS Adam steps on batches of 64."""
    model, x, y, loss_fn = TASKS[task](seed)
    if policy is not None:
        apply_policy(model, policy, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        first = loss_fn(model(x), y).item()
    for step in range(STEPS):
        idx = torch.arange(step * 64, step * 64 + 64) % x.shape[0]
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = loss_fn(model(x), y).item()
    return first, last, model


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the machine is shared; results do not depend on it


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("policy", list(REL_MARGIN))
def test_policy_final_loss_is_within_margin_of_fp32(task: str, policy: str) -> None:
    first32, last32, _ = _train(task, None)
    first, last, _ = _train(task, policy)
    assert last32 < 0.5 * first32 and last < 0.5 * first, (task, policy, first, last)
    assert abs(last - last32) <= REL_MARGIN[policy] * last32, (task, policy, last, last32)


@pytest.mark.parametrize("task", list(TASKS))
def test_fp32_policy_is_bit_identical_to_plain_pytorch(task: str) -> None:
    _, _, plain = _train(task, None)
    _, _, wrapped = _train(task, "fp32")
    assert any(type(m).__name__.startswith("Policy") for m in wrapped.modules())
    for a, b in zip(plain.state_dict().values(), wrapped.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert all(not type(m).__name__.startswith("Policy") for m in remove_policy(wrapped).modules())


def test_cfp8_training_is_reproducible_for_a_seed() -> None:
    a = _train("mlp", "cfp8", seed=3)[2].state_dict()
    b = _train("mlp", "cfp8", seed=3)[2].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
