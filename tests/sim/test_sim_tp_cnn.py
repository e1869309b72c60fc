"""Tensor parallelism on models without attention blocks (CNNs, MLPs): Megatron-style pairs of
weight ops (column-parallel, then row-parallel) leave partial sums on every rank, which cost an
all-reduce of the pair's output in forward (Megatron's g) and, in backward, of the gradient of
the pair's input (its conjugate f, wherever that input needs a gradient). Found from the
dataflow (`tpflow.tp_collectives`), as for transformers; the planner must pay for them."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from dojo.capture import capture
from dojo.compiler.program import compile_program
from dojo.compiler.work import model_work
from dojo.graph import Graph
from dojo.hardware import load_system
from dojo.hardware.spec import SystemSpec
from dojo.plan.plan import parse_plan
from dojo.sim.search import best_plan

B, C, HW, PAIRS = 4, 16, 8, 3
ACT = B * C * HW * HW * 2  # one (B, C, H, W) activation in BF16, bytes


def _pair() -> nn.Module:
    """conv C -> 2C (column-parallel: split output channels), per-channel BatchNorm and ReLU on
    the split channels, conv 2C -> C (row-parallel: partial sums), BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(C, 2 * C, 3, padding=1, bias=False), nn.BatchNorm2d(2 * C),
                         nn.ReLU(), nn.Conv2d(2 * C, C, 3, padding=1, bias=False),
                         nn.BatchNorm2d(C), nn.ReLU())


def _cnn_graph() -> Graph:
    model = nn.Sequential(*(_pair() for _ in range(PAIRS))).to("meta")
    x = torch.empty(B, C, HW, HW, device="meta")
    y = torch.empty(B, C, HW, HW, device="meta")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return capture(model, (x,), nn.functional.mse_loss, opt, targets=(y,), name="cnn",
                   repeat_blocks=False).graph


def test_cnn_tp_collectives_are_the_hand_count() -> None:
    """tp = 2, BF16: per micro-batch, one all-reduce of the pair's (B, C, H, W) output per pair
    forward, and one of the gradient of each pair's input backward except the first pair's,
    whose input is the data (no gradient); BatchNorm's per-channel statistics need none. Per
    step, times the micro-batches."""
    work = model_work(_cnn_graph(), tp=2, scale=0.5)
    spec = load_system("h100-cluster", devices=2)
    program = compile_program(work, parse_plan("dp=1,tp=2,mb=4", "test plan"), spec, batch=8)
    (chunk,) = program.chunks
    assert [(c.kind, c.nbytes) for c in chunk.tp_forward] == [("all_reduce", ACT)] * PAIRS
    assert [(c.kind, c.nbytes) for c in chunk.tp_backward] == [("all_reduce", ACT)] * (PAIRS - 1)
    per_step = program.microbatches * sum(c.nbytes for c in (*chunk.tp_forward,
                                                              *chunk.tp_backward))
    assert per_step == 2 * ACT * (2 * PAIRS - 1)
    assert all(c.levels == program.tp_levels and c.levels for c in chunk.tp_forward)


def test_cnn_replicated_ops_run_whole_on_every_rank() -> None:
    """Outside the split region (after the row-parallel conv) each rank runs BatchNorm and ReLU
    on the whole tensor: the vector work per rank is more than half of tp = 1's (the old model
    halved all of it), and the matrix work exactly half."""
    graph = _cnn_graph()
    one, two = model_work(graph, tp=1, scale=0.5), model_work(graph, tp=2, scale=0.5)

    def total(work: object, kind: str, field: str) -> float:
        ops = [op for sec in (work.pre, work.post) for op in sec.forward]  # type: ignore[attr-defined]
        return sum(getattr(op, field) for op in ops if op.kind == kind)

    assert total(two, "matrix", "flops") == total(one, "matrix", "flops") / 2
    assert total(two, "vector", "bytes") > 0.6 * total(one, "vector", "bytes")


def _slow_links(spec: SystemSpec, bytes_per_s: float) -> SystemSpec:
    """`spec` with every level's link at `bytes_per_s` (one port)."""
    levels = tuple(dataclasses.replace(lv, spec=dataclasses.replace(
        lv.spec, link=dataclasses.replace(lv.spec.link, bytes_per_s=bytes_per_s, ports=1)))
        for lv in spec.levels)
    return dataclasses.replace(spec, levels=levels)


def test_planner_prefers_dp_for_a_small_cnn_on_slow_links() -> None:
    """On 2 GPUs joined by a 1 GB/s link, the occupancy CNN's activations (MB per sample) cost far
    more to all-reduce than its 0.3 M parameters' gradients: no tp (the best plan is dp = 2, or
    one GPU with the other idle, as plans may leave devices idle), and tp = 2 is slower."""
    spec = _slow_links(load_system("h100-cluster", devices=2), 1e9)
    found = best_plan("occupancy", {}, spec, 4)
    assert found.best.plan.tp == 1 and found.best.plan.pp == 1
    tp_plans = [c for c in found.candidates if c.plan.tp == 2]
    assert all(c.step_time_s > found.best.step_time_s for c in tp_plans)
    assert math.isfinite(found.best.step_time_s)


def test_vit_pairs_start_at_the_blocks_first_linear() -> None:
    """ViT-B/16's patch embedding (a convolution on the images) stays whole on every rank, as
    Megatron-LM keeps it, so each block has its two Megatron pairs: 2 all-reduces of the
    residual stream (b x 197 tokens x 768, BF16) per block each way, never of the 3h or 4h
    activations inside a pair."""
    from dojo.sim.session import captured

    graph, _ = captured("vit-b16", {}, 2, None)
    work = model_work(graph, tp=2, scale=0.5)
    residual = 2 * 197 * 768 * 2
    assert work.block is not None and work.repeat == 12
    for phase in ("forward", "backward"):
        # the head's (b x 768) input gradient and the loss's row statistics are far smaller
        big = {name: [nbytes for _, nbytes in getattr(sec, f"tp_{phase}") if nbytes > 10_000]
               for name, sec in (("pre", work.pre), ("block", work.block), ("post", work.post))}
        assert big == {"pre": [], "block": [residual] * 2, "post": []}, phase
