"""Every zoo model, at its `small` size, trains one step on the CPU; presets build on meta."""

from __future__ import annotations

import time

import pytest
import torch

from dojo.models import ModelBundle, build, names


def _step_seconds(bundle: ModelBundle) -> tuple[float, float]:
    opt = bundle.make_optimizer(bundle.model.parameters())
    bundle.train_step(opt)  # warm-up: allocator, optimizer state
    start = time.perf_counter()
    loss = bundle.train_step(opt)
    return time.perf_counter() - start, float(loss)


@pytest.mark.parametrize("name", names())
def test_small_model_trains_one_step_fast(name: str) -> None:
    torch.set_num_threads(1)
    bundle = build(name, small=True, batch=2)
    before = [p.detach().clone() for p in bundle.model.parameters()]
    seconds, loss = _step_seconds(bundle)
    assert torch.isfinite(torch.tensor(loss))
    changed = sum(not torch.equal(a, p) for a, p in zip(before, bundle.model.parameters()))
    assert changed == len(before)  # every parameter received a gradient and moved
    assert seconds < 0.5


@pytest.mark.parametrize("name", names())
def test_preset_forward_on_meta_has_expected_shape(name: str) -> None:
    bundle = build(name, device="meta", batch=1, seq=8 if name.startswith(("gpt", "llama"))
                   else None)
    out = bundle.model(*bundle.example_inputs)
    assert out.device.type == "meta"
    assert out.shape[: bundle.targets[0].dim()] == bundle.targets[0].shape
    loss = bundle.loss_fn(out, *bundle.targets)
    assert loss.shape == ()


def test_optimizer_defaults_sgd_for_cnns_adamw_for_transformers() -> None:
    params = [torch.nn.Parameter(torch.zeros(1))]
    for name in ("resnet18", "resnet50"):
        assert isinstance(build(name, small=True).make_optimizer(params), torch.optim.SGD)
    for name in ("vit-b16", "gpt2-small", "llama"):
        opt = build(name, small=True).make_optimizer(params)
        assert isinstance(opt, torch.optim.AdamW)
    opt = build("gpt", small=True, overrides={"optimizer": "sgd", "lr": 0.5}).make_optimizer(params)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 0.5


def test_build_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b = build("gpt", small=True, seed=7), build("gpt", small=True, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.example_inputs[0], b.example_inputs[0])
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    c = build("gpt", small=True, seed=8)
    assert not torch.equal(a.example_inputs[0], c.example_inputs[0])


def test_sequence_length_and_batch_shape_inputs() -> None:
    bundle = build("gpt2-small", device="meta", batch=4, seq=100)
    assert bundle.sequence and bundle.example_inputs[0].shape == (4, 100)
    assert bundle.targets[0].shape == (4, 100)
    tokens = build("llama", small=True, batch=3, seq=5)
    assert tokens.example_inputs[0].shape == (3, 5)
    # Next-token targets: the input shifted by one position.
    assert torch.equal(tokens.example_inputs[0][:, 1:], tokens.targets[0][:, :-1])
