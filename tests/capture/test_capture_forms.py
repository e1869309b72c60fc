"""Closed forms, repeated-block folding, fake capture of huge models, and bad input."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import dojo
from dojo.errors import DojoError
from dojo.graph import peak_activation_bytes, phase_totals, state_bytes
from dojo.models import build


def _capture(bundle: Any, **kw: Any) -> Any:
    opt = bundle.make_optimizer(bundle.model.parameters())
    return dojo.capture(bundle.model, bundle.example_inputs, bundle.loss_fn, opt,
                        targets=bundle.targets, **kw)


def _matmul_flops(graph: Any, phases: tuple[str, ...] = ("forward", "backward")) -> int:
    reps = {b.name: b.repeat for b in graph.blocks}
    return sum(op.flops * reps.get(op.block, 1) for op in graph.ops
               if op.rule == "flop_counter" and op.phase in phases)


def test_gpt_is_six_params_tokens_plus_attention() -> None:
    bundle = build("gpt2-small", batch=2, seq=128, device="meta")
    cfg = bundle.config
    h, L, s, b = cfg.hidden, cfg.layers, 128, 2
    matmul_params = L * (4 * h * h + 2 * h * cfg.ffn) + cfg.vocab * h  # blocks + tied LM head
    tokens = b * s
    # attention per layer: QK^T and PV, 2 x (2 B S^2 h) forward; the backward recomputes scores
    # and adds 4 more matmuls (flop_counter's flash formula): 3.5x the forward in total
    attention = L * 4 * b * s * s * h * 7 // 2
    got = _matmul_flops(_capture(bundle).graph)
    assert got == 6 * matmul_params * tokens + attention


def test_resnet50_forward_is_the_published_4_1_gmac() -> None:
    bundle = build("resnet50", batch=1, device="meta")
    assert tuple(bundle.example_inputs[0].shape) == (1, 3, 224, 224)
    gmac = _matmul_flops(_capture(bundle).graph, ("forward",)) / 2e9
    assert gmac == pytest.approx(4.1, rel=0.01)  # torchvision model card: 4.09 GMAC


def test_cpu_attention_kernel_flops_are_the_closed_form() -> None:
    q, k, v = (torch.randn(2, 4, 16, 8, requires_grad=True) for _ in range(3))

    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return F.scaled_dot_product_attention(q * self.w, k, v)

    model = Attn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    graph = dojo.capture(model, (q, k, v), lambda y: y.sum(), opt).graph
    attn = {op.phase: op.flops for op in graph.ops if "scaled_dot_product" in op.target}
    bhsd = 2 * 4 * 16 * 16 * 8  # B H S S D
    assert attn == {"forward": 4 * bhsd, "backward": 10 * bhsd}


@pytest.mark.parametrize("layers", [2, 5])
def test_folded_blocks_equal_the_full_capture(tiny_gpt: Any, layers: int) -> None:
    """A stack of identical blocks (2 layers too: the small presets) folds into one template
    whose totals, state and peak memory equal the unfolded capture's."""
    model, inputs, loss_fn, targets = tiny_gpt(layers)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    folded = dojo.capture(model, inputs, loss_fn, opt, targets=targets).graph
    full = dojo.capture(model, inputs, loss_fn, opt, targets=targets, repeat_blocks=False).graph
    assert [(b.name, b.repeat) for b in folded.blocks] == [("blocks", layers)]
    assert not full.blocks
    assert len(folded.ops) < len(full.ops)
    assert phase_totals(folded) == phase_totals(full)
    assert state_bytes(folded) == state_bytes(full)
    assert peak_activation_bytes(folded) == peak_activation_bytes(full)
    block_params = sum(p.numel() for p in model.blocks[0].parameters())
    assert folded.blocks[0].params == block_params


def test_pairs_fold_only_outside_longer_stacks() -> None:
    """Two identical stages that each hold 3 identical layers keep the 3-stack (the finer block
    a pipeline splits); a lone pair of identical layers is a stack of 2."""
    from dojo.capture.blocks import find_stacks

    def layers(n: int) -> nn.ModuleList:
        return nn.ModuleList(nn.Linear(4, 4) for _ in range(n))

    stages = nn.Module()
    stages.stages = nn.ModuleList(nn.ModuleDict({"layers": layers(3)}) for _ in range(2))
    assert find_stacks(stages) == {"stages.0.layers": 3, "stages.1.layers": 3}
    pair = nn.Module()
    pair.blocks, pair.heads = layers(2), nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 2)])
    assert find_stacks(pair) == {"blocks": 2}


def test_capture_size_does_not_grow_with_depth(tiny_gpt: Any) -> None:
    graphs = []
    for layers in (4, 64):
        model, inputs, loss_fn, targets = tiny_gpt(layers, device="meta")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        graphs.append(dojo.capture(model, inputs, loss_fn, opt, targets=targets).graph)
        assert state_bytes(graphs[-1]).param_count == sum(p.numel() for p in model.parameters())
    assert len(graphs[0].ops) == len(graphs[1].ops)
    assert len(graphs[0].tensors) == len(graphs[1].tensors)


def test_gpt3_175b_captures_with_fake_tensors_in_seconds() -> None:
    bundle = build("gpt3-175b", batch=1, device="meta")
    start = time.perf_counter()
    graph = _capture(bundle).graph
    elapsed = time.perf_counter() - start
    params = sum(p.numel() for p in bundle.model.parameters())
    assert state_bytes(graph).param_count == params
    assert params == pytest.approx(175e9, rel=0.005)  # Brown et al. 2020, Table 2.1
    assert [(b.name, b.repeat) for b in graph.blocks] == [("blocks", 96)]
    assert elapsed < 30


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        y = self.lin(x)
        if y.sum().item() > 0:  # data-dependent control flow: cannot be traced
            return y
        return -y


def test_untraceable_model_names_the_source_line() -> None:
    model = _Branchy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(DojoError) as err:
        dojo.capture(model, (torch.randn(2, 4),), lambda y: y.sum(), opt)
    text = str(err.value)
    assert "test_capture_forms.py" in text and "if y.sum().item() > 0" in text
    assert "data-dependent" in text and "\n" not in text


def test_unsupported_optimizer_lists_the_supported_ones() -> None:
    model = nn.Linear(4, 4)
    opt = torch.optim.RMSprop(model.parameters())
    with pytest.raises(DojoError, match=r"RMSprop is not supported.*SGD, Adam, AdamW"):
        dojo.capture(model, (torch.randn(2, 4),), lambda y: y.sum(), opt)


def test_loss_must_be_a_scalar() -> None:
    model = nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(DojoError, match="scalar"):
        dojo.capture(model, (torch.randn(2, 4),), lambda y: y, opt)


@pytest.mark.parametrize(("make_opt", "per_element"), [
    (lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.1), 11),
    (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-4), 4),
    (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), 3),
], ids=["adamw", "sgd-momentum-wd", "sgd-momentum"])
def test_optimizer_flops_follow_the_documented_formula(tiny_gpt: Any, make_opt: Any,
                                                       per_element: int) -> None:
    model, inputs, loss_fn, targets = tiny_gpt(3)
    graph = dojo.capture(model, inputs, loss_fn, make_opt(model.parameters()),
                         targets=targets).graph
    params = sum(p.numel() for p in model.parameters())
    assert phase_totals(graph)["optimizer"].flops == per_element * params


def test_phases_are_in_order_and_forward_ops_know_their_layer(tiny_gpt: Any) -> None:
    model, inputs, loss_fn, targets = tiny_gpt(2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # unfolded (2 blocks now fold into one template): every layer and gradient is in the graph
    graph = dojo.capture(model, inputs, loss_fn, opt, targets=targets, repeat_blocks=False).graph
    order = {"forward": 0, "backward": 1, "optimizer": 2}
    ranks = [order[op.phase] for op in graph.ops]
    assert ranks == sorted(ranks) and set(ranks) == {0, 1, 2}
    # the backward starts from the loss gradient seed
    first_bwd = next(op for op in graph.ops if op.phase == "backward")
    assert first_bwd.target == "aten.ones_like.default"
    layers = {op.layer for op in graph.ops if op.target == "aten.addmm.default"}
    assert {"blocks.0.qkv", "blocks.1.fc"} <= layers
    grads = [t for t in graph.tensors if t.role == "gradient" and t.view_of is None]
    assert sum(t.bytes for t in grads) == 4 * sum(p.numel() for p in model.parameters())


def test_a_stack_that_does_not_mirror_falls_back_to_full_depth() -> None:
    # the first Linear reads the raw input (no gradient), so instance 0's backward differs from
    # instance 1's: the stack must be captured at full depth, with the same totals
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(*(nn.Linear(8, 8) for _ in range(4))), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(3, 8)
    graph = dojo.capture(model, (x,), lambda y: y.square().mean(), opt).graph
    full = dojo.capture(model, (x,), lambda y: y.square().mean(), opt, repeat_blocks=False).graph
    assert not graph.blocks
    assert phase_totals(graph) == phase_totals(full)
    assert sum(op.target == "aten.addmm.default" for op in graph.ops) == 5
