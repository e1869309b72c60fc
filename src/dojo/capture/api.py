"""`capture`: model + example batch + loss + optimizer -> `Captured` (IR graph + runnable step)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dojo.capture import blocks
from dojo.capture.build import freeze, from_fx
from dojo.capture.params import (
    CODE_KEY,
    META_KEY,
    MODULES_KEY,
    declared_names,
    module_classes,
)
from dojo.capture.trace import Signature, flat_inputs, trace_step
from dojo.errors import DojoError
from dojo.graph import Graph


@dataclass(frozen=True)
class StepResult:
    """What one executed step produced: the loss, and per parameter name its gradient, updated
    value and updated optimizer state (state name -> tensor)."""

    loss: Tensor
    grads: dict[str, Tensor]
    params: dict[str, Tensor]
    state: dict[str, dict[str, Tensor]]


@dataclass(frozen=True)
class Captured:
    """A captured training step: the IR `graph` and, when no blocks were folded, the traced fx
    `module` that runs the same step on real tensors (see `run`)."""

    graph: Graph
    module: torch.fx.GraphModule | None
    signature: Signature

    def run(self, model: nn.Module, optimizer: Any, inputs: Sequence[Tensor],
            targets: Sequence[Tensor] = ()) -> StepResult:
        """Execute the traced step on `model`'s current parameters and `optimizer`'s state.

        Nothing is mutated: updated values come back in the result. DojoError if blocks were
        folded (the module then holds only two instances); capture with repeat_blocks=False.
        """
        if self.module is None:
            raise DojoError("this capture folded repeated blocks and cannot run; "
                            "capture with repeat_blocks=False to execute it")
        sig = self.signature
        flat = flat_inputs(model, optimizer, sig, list(inputs), list(targets))
        with torch.no_grad():
            out = list(self.module(*flat))
        trained = [n for n, g in zip(sig.params, sig.has_grad) if g]
        updated = [(n, u) for n, u, g in zip(sig.params, sig.updates, sig.has_grad) if g and u]
        loss, rest = out[0], out[1:]
        grads = dict(zip(trained, rest[: len(trained)]))
        rest = rest[len(trained):]
        params = dict(zip([n for n, _ in updated], rest[: len(updated)]))
        rest = rest[len(updated):]
        state: dict[str, dict[str, Tensor]] = {}
        for n, u in updated:
            state[n] = dict(zip(u.state_names, rest[: len(u.state_names)]))
            rest = rest[len(u.state_names):]
        return StepResult(loss, grads, params, state)


def _as_tuple(x: Any) -> tuple[Tensor, ...]:
    if x is None:
        return ()
    return (x,) if isinstance(x, Tensor) else tuple(x)


def capture(model: nn.Module, example_inputs: Any, loss_fn: Callable[..., Tensor], optimizer: Any,
            *, targets: Any = (), name: str = "", repeat_blocks: bool = True) -> Captured:
    """Capture one training step of `model` as a `Captured` graph.

    The step is `loss = loss_fn(model(*example_inputs), *targets)`, its gradients, and one
    `optimizer` update (SGD, Adam, AdamW; see dojo.capture.optim). Tensors may be real or on the
    "meta" device; tracing uses fake tensors either way, so nothing is computed. With
    `repeat_blocks`, stacks of >= 2 identical blocks are traced at depth 2 and folded into one
    template (see dojo.capture.blocks). Raises DojoError when the step cannot be traced, naming
    the op or source line and the reason.
    """
    if not isinstance(model, nn.Module):
        raise DojoError(f"capture needs a torch.nn.Module, got {type(model).__name__}")
    inputs, tgts = _as_tuple(example_inputs), _as_tuple(targets)
    stacks = blocks.find_stacks(model) if repeat_blocks else {}
    with blocks.reduced(model, stacks):
        traced = trace_step(model, loss_fn, optimizer, inputs, tgts, list(stacks))
    raw = from_fx(traced.module, traced.signature, traced.marks)
    folded = [p for p, n in stacks.items() if blocks.compress(raw, traced.marks, p, n)]
    if len(folded) < len(stacks):  # a stack did not mirror: trace again with it at full depth
        keep = {p: stacks[p] for p in folded}
        with blocks.reduced(model, keep):
            traced = trace_step(model, loss_fn, optimizer, inputs, tgts, list(keep))
        raw = from_fx(traced.module, traced.signature, traced.marks)
        folded = [p for p, n in keep.items() if blocks.compress(raw, traced.marks, p, n)]
    meta = {
        "optimizer": type(optimizer).__name__,
        "inputs": ";".join(str(tuple(t.shape)) for t in inputs),
        "folded_blocks": ",".join(folded),
    }
    meta[CODE_KEY] = module_classes(model)
    meta[MODULES_KEY] = str(sum(1 for _ in model.modules()))
    replicated = declared_names(model)
    if replicated:  # linears the model keeps whole over tp (dojo.compiler.replicated)
        meta[META_KEY] = replicated
    graph = freeze(raw, name or type(model).__name__, meta)
    return Captured(graph, None if folded else traced.module, traced.signature)
