"""Trace one training step (forward, loss, backward, optimizer update) into a torch.fx graph.

The traced function is pure: it takes (trainable params, buffers, optimizer state, inputs,
targets) and returns (loss, grads, new params, new state). It runs the model through
`torch.func.functional_call`, gets gradients with `torch.autograd.grad`, and applies the
functional optimizer of `dojo.capture.optim`. `make_fx` traces it under fake tensors, at ATen
level (below autograd, so the backward appears as ATen ops). While tracing, markers record how
many fx nodes exist at each phase boundary, module entry/exit and block-instance boundary; the
graph builder turns those counts into phases, layers and block ranges.
"""

from __future__ import annotations

import contextlib
import linecache
import logging
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.fx.experimental.proxy_tensor import get_proxy_mode, make_fx

from dojo.capture import optim
from dojo.errors import DojoError

# One marker: (kind, label, index, fx node count at that moment).
Mark = tuple[str, str, int, int]


@dataclass(frozen=True)
class Signature:
    """The flat input layout of the traced step and what each output is.

    Inputs: params, buffers, then for each updated param its state tensors, then example inputs,
    then targets. Outputs: loss, grads (of `params` with a gradient), new params and new state
    (of `updated` params, in order).
    """

    params: tuple[str, ...]
    buffers: tuple[str, ...]
    updates: tuple[optim.ParamUpdate | None, ...]
    n_inputs: int
    n_targets: int
    has_grad: tuple[bool, ...] = ()

    @property
    def n_state(self) -> int:
        return sum(len(u.state_names) for u in self.updates if u is not None)


@dataclass
class Traced:
    """What tracing produced: the fx module, its signature and the markers (node counts)."""

    module: torch.fx.GraphModule
    signature: Signature
    marks: list[Mark] = field(default_factory=list)


def _fake_like(mode: FakeTensorMode, t: Tensor) -> Tensor:
    """A fake CPU tensor with `t`'s shape, strides and dtype (meta tensors become CPU fakes)."""
    if t.device.type == "meta":
        with mode:
            return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cpu")
    return mode.from_tensor(t)


def signature_of(model: nn.Module, optimizer: Any, n_inputs: int, n_targets: int) -> Signature:
    """Which parameters train, which are buffers, and each one's optimizer update."""
    plan = optim.plan_updates(optimizer)
    params, buffers, updates = [], [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            params.append(name)
            updates.append(plan.get(id(p)))
        else:
            buffers.append(name)
    buffers += [name for name, _ in model.named_buffers()]
    return Signature(tuple(params), tuple(buffers), tuple(updates), n_inputs, n_targets)


def flat_inputs(model: nn.Module, optimizer: Any, sig: Signature, inputs: Sequence[Tensor],
                targets: Sequence[Tensor], zeros: Any = torch.zeros_like) -> list[Tensor]:
    """The tensors the traced step takes, in `Signature` order; missing optimizer state is
    `zeros(param)`."""
    named: dict[str, Tensor] = dict(model.named_parameters())
    named.update(dict(model.named_buffers()))
    flat = [named[n].detach() for n in sig.params] + [named[n].detach() for n in sig.buffers]
    for name, upd in zip(sig.params, sig.updates):
        if upd is not None:
            p = named[name]
            state = optimizer.state.get(p, {})
            flat += [s.detach() for s in optim.initial_state(upd, p, state, zeros)]
    return flat + list(inputs) + list(targets)


def _node_count() -> int:
    mode = get_proxy_mode()
    return len(mode.tracer.graph.nodes) if mode is not None else 0


class _Marker:
    """Collects markers while the step is traced (see module docstring)."""

    def __init__(self) -> None:
        self.marks: list[Mark] = []
        self.has_grad: tuple[bool, ...] = ()

    def __call__(self, kind: str, label: str = "", index: int = 0) -> None:
        self.marks.append((kind, label, index, _node_count()))

    def grad_hook(self, kind: str, label: str, index: int) -> Callable[[Tensor], None]:
        def hook(_grad: Tensor) -> None:
            self(kind, label, index)

        return hook


@contextlib.contextmanager
def _module_hooks(model: nn.Module, mark: _Marker, stacks: Sequence[str]) -> Iterator[None]:
    """Mark module entry/exit (layers) and, for block instances of `stacks`, gradient hooks."""
    handles = []
    parents = set(stacks)
    for path, mod in model.named_modules():
        if not path:
            continue
        parent, _, idx = path.rpartition(".")
        inst = int(idx) if parent in parents and idx.isdigit() else -1

        def pre(_m: nn.Module, args: Any, path: str = path, inst: int = inst,
                parent: str = parent) -> None:
            mark("enter", path)
            if inst >= 0:
                mark("fwd_start", parent, inst)
                x = args[0] if args and isinstance(args[0], Tensor) else None
                if x is not None and x.requires_grad:
                    x.register_hook(mark.grad_hook("bwd_end", parent, inst))

        def post(_m: nn.Module, _args: Any, out: Any, path: str = path, inst: int = inst,
                 parent: str = parent) -> None:
            mark("exit", path)
            if inst >= 0:
                mark("fwd_end", parent, inst)
                if isinstance(out, Tensor) and out.requires_grad:
                    out.register_hook(mark.grad_hook("bwd_start", parent, inst))

        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _step_fn(model: nn.Module, loss_fn: Callable[..., Tensor], sig: Signature, mark: _Marker,
             stacks: Sequence[str]) -> Callable[..., tuple[Tensor, ...]]:
    n_p, n_b = len(sig.params), len(sig.buffers)

    def step(*flat: Tensor) -> tuple[Tensor, ...]:
        params = list(flat[:n_p])
        state = dict(zip(sig.params + sig.buffers, flat[: n_p + n_b]))
        pos = n_p + n_b + sig.n_state
        inputs = flat[pos: pos + sig.n_inputs]
        targets = flat[pos + sig.n_inputs:]
        with _module_hooks(model, mark, stacks):
            out = torch.func.functional_call(model, state, tuple(inputs))
            loss = loss_fn(out, *targets)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise DojoError("loss_fn must return a scalar tensor")
            mark("loss")
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            mark.has_grad = tuple(g is not None for g in grads)
        mark("grad")
        return (loss, *_optimizer_phase(sig, params, grads, flat[n_p + n_b: pos], mark))

    return step


def _optimizer_phase(sig: Signature, params: list[Tensor], grads: Sequence[Tensor | None],
                     states: Sequence[Tensor], mark: _Marker) -> list[Tensor]:
    new_params: list[Tensor] = []
    new_states: list[Tensor] = []
    s = 0
    for i, (p, g, upd) in enumerate(zip(params, grads, sig.updates)):
        if upd is None:
            continue
        k = len(upd.state_names)
        if g is not None:
            mark("param_start", sig.params[i], i)
            new_p, new_s = optim.apply(upd, p, g, list(states[s: s + k]))
            new_params.append(new_p)
            new_states += new_s
            mark("param_end", sig.params[i], i)
        s += k
    kept = [g for g in grads if g is not None]
    return kept + new_params + new_states


def trace_step(model: nn.Module, loss_fn: Callable[..., Tensor], optimizer: Any,
               inputs: Sequence[Tensor], targets: Sequence[Tensor],
               stacks: Sequence[str] = ()) -> Traced:
    """Trace one training step of `model` under fake tensors; DojoError if tracing fails.

    `stacks` are module paths of repeated-block containers to mark per instance.
    """
    sig = signature_of(model, optimizer, len(inputs), len(targets))
    mode = FakeTensorMode(allow_non_fake_inputs=True)

    def fake_zeros(p: Tensor) -> Tensor:
        with mode:
            return torch.empty_strided(p.shape, p.stride(), dtype=p.dtype, device="cpu")

    real = flat_inputs(model, optimizer, sig, inputs, targets, fake_zeros)
    fakes = [t if isinstance(t, FakeTensor) else _fake_like(mode, t) for t in real]
    for f in fakes[: len(sig.params)]:
        f.requires_grad_(True)
    mark = _Marker()
    step = _step_fn(model, loss_fn, sig, mark, stacks)
    try:
        with _quiet_fake_tensor_log():
            gm = make_fx(step, tracing_mode="fake", _allow_non_fake_inputs=True)(*fakes)
    except DojoError:
        raise
    except Exception as err:
        raise DojoError(explain_trace_error(err)) from None
    return Traced(gm, Signature(sig.params, sig.buffers, sig.updates, sig.n_inputs,
                                sig.n_targets, mark.has_grad), mark.marks)


@contextlib.contextmanager
def _quiet_fake_tensor_log() -> Iterator[None]:
    """FakeTensorMode logs a failing op's traceback at ERROR level before raising; the error is
    reported once, as the one line of `explain_trace_error`, so that log is held back."""
    log = logging.getLogger("torch._subclasses.fake_tensor")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def explain_trace_error(err: BaseException) -> str:
    """One line: the failing op or user source line and the reason tracing stopped."""
    frames = traceback.extract_tb(err.__traceback__)
    user = [f for f in frames if "/torch/" not in f.filename and "/dojo/capture/" not in f.filename]
    where = ""
    if user:
        f = user[-1]
        code = (f.line or linecache.getline(f.filename, f.lineno or 0)).strip()
        where = f" at {f.filename}:{f.lineno} ({code})"
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    lowered = reason.lower()
    if any(k in lowered for k in ("data-dependent", "data dependent", "_local_scalar_dense")):
        reason = f"data-dependent control flow or .item() on a traced tensor ({reason})"
    text = f"cannot capture the training step{where}: {type(err).__name__}: {reason}"
    return text[:400]
