"""Tiny stacks of residual blocks whose eager forward and backward time is dispatch: the `cpu`
device's seconds per dispatched op (bench/calibrate_cpu.py, step 3). Each block's kernels take
well under a microsecond; each phase's time is divided by the ops the simulator counts for it
(dojo's own capture: one per non-view ATen op).
"""

from __future__ import annotations

import time
from typing import Any

import torch


class _MLPBlock(torch.nn.Module):
    """x + fc2(gelu(fc1(norm(x)))): a transformer MLP sub-block."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(width)
        self.fc1 = torch.nn.Linear(width, 2 * width)
        self.fc2 = torch.nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))  # [b, t, width]


class _AttentionBlock(torch.nn.Module):
    """x + proj(attention(qkv(norm(x)))) with heads split and merged by views."""

    def __init__(self, width: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.norm = torch.nn.LayerNorm(width)
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.proj = torch.nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        q, k, v = (z.view(b, t, self.heads, w // self.heads).transpose(1, 2)  # [b, h, t, w/h]
                   for z in self.qkv(self.norm(x)).split(w, dim=-1))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.proj(y.transpose(1, 2).reshape(b, t, w))  # [b, t, w]


class _ConvBlock(torch.nn.Module):
    """relu(bn(conv3x3(x))) + x: a residual CNN unit."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))) + x  # [b, c, h, w]


class _PointwiseBlock(torch.nn.Module):
    """x + silu(a) * b with a, b from an RMS-normalised x: elementwise ops called as functions
    from one module's code (RMSNorm, SwiGLU, rotary embeddings in llama-style models)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * torch.rsqrt(x.pow(2) + 1e-6) * self.w  # [b, t, width]
        gate = torch.nn.functional.silu(h) * torch.sigmoid(h - 1.0)
        return x + gate * torch.exp(-h) / (h.abs() + 1.0)  # [b, t, width]


class _ViewBlock(torch.nn.Module):
    """x + s * y with y a chain of views of x (heads split, transposed and merged, a weight's
    `t`): the view ops attention heads and linear layers issue, whose backward formulas are
    views again, and two elementwise ops to join them."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.s = torch.nn.Parameter(torch.ones(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        y = x
        for _ in range(3):  # as many dispatches as the elementwise stack's, for its pass costs
            y = y.view(b, t, 2, w // 2).transpose(1, 2).transpose(1, 2).reshape(b, t, w)
            y = y.unsqueeze(0).squeeze(0).permute(0, 2, 1).permute(0, 2, 1)  # [b, t, w]
        return x + self.s.t().t() * y  # [b, t, w], t = w


def _stacks(blocks: int = 2) -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
    """`blocks` tiny blocks of each kind (two for the calibration) and an input: kernels of
    well under a microsecond. The convolutions take one image, so PyTorch runs them by
    im2col: oneDNN's setup per call is its own figure (calibrate_cpu.onednn_setup), not part
    of the dispatch."""
    def two(block: type[torch.nn.Module], width: int) -> torch.nn.Module:
        return torch.nn.Sequential(*(block(width) for _ in range(blocks)))

    return {"mlp": (two(_MLPBlock, 8), torch.randn(1, 2, 8)),
            "attention": (two(_AttentionBlock, 8), torch.randn(1, 4, 8)),
            "conv": (two(_ConvBlock, 2), torch.randn(1, 2, 4, 4)),  # im2col, not oneDNN
            "pointwise": (two(_PointwiseBlock, 8), torch.randn(1, 2, 8)),
            "view": (two(_ViewBlock, 8), torch.randn(1, 8, 8))}


def _loss(y: torch.Tensor) -> torch.Tensor:
    return y.square().mean()


def stack_graph(model: torch.nn.Module, x: torch.Tensor) -> Any:
    """The captured graph of one step of stack `model` on `x` (its loss, SGD)."""
    from dojo.capture import capture

    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    return capture(model, (x,), _loss, opt, name="stack", repeat_blocks=False).graph


def counted_ops(model: torch.nn.Module, x: torch.Tensor, conv: bool = False,
                eltwise: bool = False, graph: Any = None, views: bool = False
                ) -> tuple[int, int, int, int]:
    """(forward, backward, forward elementwise, backward elementwise) ops of one step of
    `model` as the simulator counts them: the captured graph's non-view ops
    (dojo.compiler.fusion.groups at fusion=none), and of those the ones of rule "pointwise"
    (with `conv`, the convolutions instead; with `eltwise`, the exact GELUs oneDNN runs,
    `dojo.compiler.eager_cpu.eltwise_calls`; with `views`, the view ops, which the first two
    leave out, instead). `graph`: `stack_graph(model, x)` where the caller has it."""
    from dojo.compiler.eager_cpu import eltwise_calls
    from dojo.compiler.fusion import FREE_RULES

    graph = graph if graph is not None else stack_graph(model, x)
    ops = [op for op in graph.ops if op.rule not in FREE_RULES]
    phases = ("forward", "backward")
    if views:
        return tuple([sum(1 for op in ops if op.phase == phase) for phase in phases]
                     + [sum(1 for op in graph.ops if op.phase == phase and op.rule in FREE_RULES)
                        for phase in phases])  # type: ignore[return-value]

    def picked(op: Any) -> bool:
        if eltwise:
            return eltwise_calls([op], graph) > 0
        return "convolution" in op.target if conv else op.rule == "pointwise"

    return tuple([sum(1 for op in ops if op.phase == phase) for phase in ("forward", "backward")]
                 + [sum(1 for op in ops if op.phase == phase and picked(op))
                    for phase in ("forward", "backward")])  # type: ignore[return-value]


def _one_step(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(forward, backward) seconds of one training step of `model` on `x`."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    loss = _loss(model(x))
    mid = time.perf_counter()
    loss.backward()
    return mid - start, time.perf_counter() - mid


def _phase_times(model: torch.nn.Module, x: torch.Tensor, repeat: int) -> tuple[float, float]:
    """Fastest (forward, backward) seconds of one step of `model` over `repeat` steps."""
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        fwd, bwd = _one_step(model, x)
        best = (min(best[0], fwd), min(best[1], bwd))
    return best


def steps_in_turn(stacks: dict[str, tuple[torch.nn.Module, torch.Tensor]], repeat: int
                  ) -> dict[str, tuple[float, float]]:
    """Fastest (forward, backward) seconds of one step of each stack over `repeat` rounds in
    which every stack steps once, in turn."""
    best = {name: (float("inf"), float("inf")) for name in stacks}
    for _ in range(repeat):
        for name, (model, x) in stacks.items():
            fwd, bwd = _one_step(model, x)
            best[name] = (min(best[name][0], fwd), min(best[name][1], bwd))
    return best


def eager_op_times(rounds: int = 8, conv_call: tuple[float, float] = (0.0, 0.0),
                   eltwise: tuple[float, float] = (0.0, 0.0)
                   ) -> dict[str, tuple[float, float, int, int]]:
    """(seconds per counted forward op, per counted backward op, forward ops, backward ops) of
    each tiny block stack: the forward issued op by op from Python module code, the backward
    by autograd's engine; the fastest of `rounds` rounds of 100 steps each, each stack run
    over and over, the rounds taking turns over the stacks (a shared machine's load comes and
    goes over seconds). `steps_in_turn` times them taking turns step by step instead
    (bench/op_context.py --stacks: 10-69 % slower; not a calibration figure).

    The elementwise and view stacks give the dispatch of an elementwise op (`pointwise`) and,
    forward, of a view op (`view`: its counts are view ops; backward 0), solved together from
    the two stacks' times (each holds some of the other's kind: `view_and_pointwise`); the
    other stacks' figures are net of their own elementwise and forward view ops at those
    figures, and of their convolutions' own fixed work per call (`conv_call`, forward and
    backward seconds: calibrate_cpu.conv_call_overhead) and of their exact GELUs' oneDNN
    setup (`eltwise`, conv_costs.eltwise_setup), which the simulator charges on top of those
    ops' dispatch: seconds per op of the rest (linear layers, norms, attention,
    convolutions), over those ops alone."""
    raw: dict[str, tuple[float, float]] = {}
    stacks = _stacks()
    graphs = {name: stack_graph(model, x) for name, (model, x) in stacks.items()}
    counts = {name: counted_ops(model, x, graph=graphs[name])
              for name, (model, x) in stacks.items()}
    convs = {name: counted_ops(model, x, conv=True, graph=graphs[name])[2:]
             for name, (model, x) in stacks.items()}
    gelus = {name: counted_ops(model, x, eltwise=True, graph=graphs[name])[2:]
             for name, (model, x) in stacks.items()}
    views = {name: counted_ops(model, x, views=True, graph=graphs[name])[2:]
             for name, (model, x) in stacks.items()}
    for _ in range(rounds):
        for name, (model, x) in stacks.items():
            fwd, bwd = _phase_times(model, x, 100)
            old = raw.get(name, (fwd, bwd))
            raw[name] = (min(old[0], fwd), min(old[1], bwd))
    raw = {name: (f - gelus[name][0] * eltwise[0], b - gelus[name][1] * eltwise[1])
           for name, (f, b) in raw.items()}
    pw_fwd, view_fwd = view_and_pointwise(
        (raw["pointwise"][0], counts["pointwise"][0], views["pointwise"][0]),
        (raw["view"][0], counts["view"][0], views["view"][0]))
    # The backward's views stay in the per-op figures: most run inside another op's formula
    # (addmm's backward takes its operands' `t`), a view's own node only where the forward
    # viewed a tensor that needs a gradient, and the stacks disagree on them (bench notes).
    pw = (pw_fwd, raw["pointwise"][1] / counts["pointwise"][1])
    vw = (view_fwd, 0.0)
    out = {"pointwise": (pw[0], pw[1], *counts["pointwise"][:2]),
           "view": (vw[0], vw[1], *views["view"])}
    for name, (fwd, bwd) in raw.items():
        if name not in out:
            nf, nb, pf, pb = counts[name]
            (cf, cb), (vf, vb) = convs[name], views[name]
            out[name] = ((fwd - pf * pw[0] - cf * conv_call[0] - vf * vw[0]) / (nf - pf),
                         (bwd - pb * pw[1] - cb * conv_call[1] - vb * vw[1]) / (nb - pb),
                         nf - pf, nb - pb)
    return out


def view_and_pointwise(pointwise: tuple[float, int, int], view: tuple[float, int, int]
                       ) -> tuple[float, float]:
    """(seconds per elementwise op, per view op) of one phase from the elementwise stack's
    and the view stack's (seconds, non-view ops, view ops): each stack's non-view ops are
    taken as elementwise (all of the first's, the joins of the second's), and the two linear
    equations solved; a figure the solution makes negative (a noisy pair) is 0 and the other
    its stack's time over its own kind's ops."""
    (t1, a1, b1), (t2, a2, b2) = pointwise, view
    det = a1 * b2 - a2 * b1
    per_op = (t1 * b2 - t2 * b1) / det if det else t1 / a1
    per_view = (a1 * t2 - a2 * t1) / det if det else 0.0
    if per_view < 0:
        return t1 / a1, 0.0
    if per_op < 0:
        return 0.0, t2 / b2
    return per_op, per_view


def _accumulate_case(width: int, rounds: int, repeat: int) -> tuple[int, float, float]:
    """(parameters, tensors, seconds accumulating costs beyond a fresh backward) of two MLP
    blocks of `width` (see `accumulate_cost`)."""
    model = torch.nn.Sequential(_MLPBlock(width), _MLPBlock(width))
    x = torch.randn(1, 2, width)

    def fresh() -> None:
        model.zero_grad(set_to_none=True)
        _loss(model(x)).backward()

    def accumulate() -> None:
        _loss(model(x)).backward()  # every parameter has a gradient: AccumulateGrad adds

    def clear() -> None:
        model.zero_grad(set_to_none=True)

    best = {"fresh": float("inf"), "accumulate": float("inf"), "clear": float("inf")}
    for _ in range(rounds):
        for name, fn in (("fresh", fresh), ("accumulate", accumulate), ("clear", clear)):
            fresh()  # gradients exist before every case
            for _ in range(repeat):
                start = time.thread_time()
                fn()
                best[name] = min(best[name], time.thread_time() - start)
    params = list(model.parameters())
    return (sum(p.numel() for p in params), len(params),
            best["accumulate"] - (best["fresh"] - best["clear"]))


def accumulate_cost(rounds: int = 5, repeat: int = 200) -> list[tuple[int, float, float]]:
    """What accumulating into existing gradients costs an eager backward beyond creating them
    (the runtime's micro-batches after the first): two MLP blocks of widths 8 (dispatch only)
    and 512 (8 MB of gradients), the backward into existing gradients against zero_grad
    (set_to_none) plus a fresh backward, less zero_grad alone; fastest thread CPU of
    `repeat`, best of `rounds`. Per width: (parameters, seconds per tensor, bytes per second
    at 12 bytes per parameter: the add's read, read and write; 0 if it cost nothing)."""
    out = []
    for width in (8, 512):
        count, tensors, extra = _accumulate_case(width, rounds, repeat)
        out.append((count, extra / tensors, 12 * count / extra if extra > 0 else 0.0))
    return out
