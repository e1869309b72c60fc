"""Forward view ops on an eager device: each is a dispatch of its own (`launch_view_s`), counted
per op as `OpCost.views` (`dojo.compiler.eager_cpu.attached_views`), and measured by the view
stack of bench/eager_stacks.py."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
import torch
from bench_module import load_bench
from torch.utils._python_dispatch import TorchDispatchMode

from dojo.compiler.work import OpCost
from dojo.hardware import load_system
from dojo.plan import parse_plan
from dojo.sim.session import compile_model

GPT = {"layers": 3, "hidden": 32, "heads": 4, "ffn": 64, "seq": 16, "vocab": 64}


class _Views(TorchDispatchMode):
    """Counts the view ops (schema-declared aliases) eager PyTorch dispatches."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func.is_view:
            self.seen[str(func)] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("model,overrides", [("gpt", GPT), ("resnet18", {})])
@pytest.mark.parametrize("fusion", ["none", "full"])
def test_the_forward_carries_every_view_eager_pytorch_dispatches(
        model: str, overrides: dict[str, int], fusion: str) -> None:
    """The program's forward ops carry, in all, as many views as eager PyTorch dispatches in
    the same model's forward and loss (recorded below autograd), target by target through the
    captured graph, whatever the plan's fusion."""
    from dojo.models import build

    plan = parse_plan(f"dp=1,mb=1,precision=fp32,fusion={fusion}")
    program, graph = compile_model(model, overrides, load_system("cpu"), plan, batch=1)
    bundle = build(model, batch=1, overrides=overrides)
    recorder = _Views()
    with recorder:
        bundle.loss_fn(bundle.model(*bundle.example_inputs), *bundle.targets)
    captured: Counter[str] = Counter()
    for op in graph.ops:
        if op.phase == "forward" and op.rule == "view":
            captured[op.target] += graph.repeat_of(op.block)
    assert captured == recorder.seen
    assert sum(o.views for c in program.chunks for o in c.forward) == recorder.seen.total() > 0


def test_views_attach_to_the_next_op_of_their_phase_and_block() -> None:
    """Two views before a GEMM attach to it, one after a phase's last op to that op; a view
    in a block template stays in the block."""
    from dojo.compiler.eager_cpu import attached_views
    from dojo.graph.ir import Graph, Op

    def op(i: int, rule: str, phase: str = "forward", block: str | None = None) -> Op:
        return Op(i, "aten.x", phase, (), (), 0, 0, 0, rule, block)

    ops = (op(0, "view"), op(1, "view"), op(2, "matmul"), op(3, "view", block="b"),
           op(4, "pointwise", block="b"), op(5, "view", block="b"), op(6, "pointwise"),
           op(7, "view"), op(8, "view", "backward"), op(9, "matmul", "backward"))
    groups = [[ops[2]], [ops[4]], [ops[6]], [ops[9]]]
    assert attached_views(Graph("g", (), ops), groups) == (2, 2, 1, 1)


def test_a_forward_view_costs_its_dispatch_on_an_eager_device_only() -> None:
    """An op carrying 3 views costs 3 x `launch_view_s` more, forward (recompute too: it runs
    the forward's code); backward its formula's views are in the backward dispatch figure; a
    device with a compiler charges none."""
    from dojo.sim.simulate import device_for

    dev = device_for(load_system("cpu"), "fp32")
    dev = replace(dev, calibration=replace(dev.calibration, launch_view_s=2e-6))
    plain = OpCost("vector", 1e3, 4e3, "aten.add.Tensor")
    viewed = replace(plain, views=3)
    assert dev.op_time(viewed) - dev.op_time(plain) == pytest.approx(6e-6, rel=1e-9)
    back = dev.for_phase("backward")
    assert back.op_time(viewed) == pytest.approx(back.op_time(plain), rel=1e-12)
    compiled = replace(dev, calibration=replace(dev.calibration, eager=False))
    assert compiled.op_time(viewed) == pytest.approx(compiled.op_time(plain), rel=1e-12)


def test_the_view_and_elementwise_figures_solve_their_two_stacks() -> None:
    """bench/eager_stacks.view_and_pointwise on two stacks of known make-up: 34 elementwise
    ops and 5 views, 6 and 52, at 4 us and 2.5 us each, gives those back; a pair whose
    solution would be a negative view figure gives the elementwise stack's mean and 0."""
    solve = load_bench("eager_stacks").view_and_pointwise
    p, v = 4e-6, 2.5e-6
    assert solve((34 * p + 5 * v, 34, 5), (6 * p + 52 * v, 6, 52)) == pytest.approx((p, v))
    noisy = solve((34 * p + 5 * v, 34, 5), (6 * p, 6, 52))
    assert noisy == pytest.approx(((34 * p + 5 * v) / 34, 0.0))


def test_the_view_stack_dispatches_views_with_few_other_ops() -> None:
    """The calibration's view stack: its captured forward holds many more views than other
    ops (the solve needs the two stacks' make-ups apart), and eager PyTorch dispatches them."""
    stacks = load_bench("eager_stacks")
    model, x = stacks._stacks()["view"]
    ops, _, views, _ = stacks.counted_ops(model, x, views=True)
    recorder = _Views()
    with recorder, torch.no_grad():
        stacks._loss(model(x))
    assert views >= 5 * ops
    assert recorder.seen.total() == views
