"""Functional forms of the optimizers capture supports, matching torch.optim's math.

Capture traces these instead of `optimizer.step()` so the update is a pure function of
(param, grad, state) with no in-place mutation; the formulas are torch's single-tensor
(`foreach=False`) paths, so traced and eager updates agree to float rounding:

- SGD: g += wd*p; buf = momentum*buf + (1-dampening)*g; g = g + momentum*buf (nesterov) or buf;
  p -= lr*g. The momentum buffer is treated as existing (steady state, step >= 2).
- Adam / AdamW: AdamW first decays p *= 1 - lr*wd (Adam adds wd*p to g instead);
  m = lerp(m, g, 1-beta1); v = beta2*v + (1-beta2)*g*g;
  p -= lr/(1-beta1^t) * m / (sqrt(v)/sqrt(1-beta2^t) + eps), with t the step number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dojo.errors import DojoError

SUPPORTED = ("SGD", "Adam", "AdamW")


@dataclass(frozen=True)
class ParamUpdate:
    """Hyperparameters of one parameter's update; `step` is the step number t being taken."""

    kind: str
    lr: float
    weight_decay: float
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    step: int = 1

    @property
    def state_names(self) -> tuple[str, ...]:
        if self.kind == "SGD":
            return ("momentum_buffer",) if self.momentum else ()
        return ("exp_avg", "exp_avg_sq")


def plan_updates(optimizer: Any) -> dict[int, ParamUpdate]:
    """id(parameter) -> its update, read from `optimizer`'s param groups and state.

    Raises DojoError for optimizers or options capture does not model (amsgrad, maximize...).
    """
    kind = type(optimizer).__name__
    if kind not in SUPPORTED:
        raise DojoError(f"optimizer {kind} is not supported by capture; supported: "
                        f"{', '.join(SUPPORTED)}")
    out: dict[int, ParamUpdate] = {}
    for group in optimizer.param_groups:
        for flag in ("amsgrad", "maximize", "differentiable"):
            if group.get(flag):
                raise DojoError(f"optimizer {kind} option {flag}=True is not supported by capture")
        for p in group["params"]:
            out[id(p)] = _update_for(kind, group, optimizer.state.get(p, {}))
    return out


def _update_for(kind: str, group: dict[str, Any], state: dict[str, Any]) -> ParamUpdate:
    lr = float(group["lr"])
    wd = float(group.get("weight_decay", 0.0))
    if kind == "SGD":
        return ParamUpdate(kind, lr, wd, momentum=float(group.get("momentum", 0.0)),
                           dampening=float(group.get("dampening", 0.0)),
                           nesterov=bool(group.get("nesterov", False)))
    if kind == "Adam" and group.get("decoupled_weight_decay"):
        kind = "AdamW"  # torch >= 2.6: Adam(decoupled_weight_decay=True) is AdamW's math
    beta1, beta2 = group["betas"]
    done = state.get("step", 0)
    step = int(done.item() if isinstance(done, Tensor) else done) + 1
    return ParamUpdate(kind, lr, wd, beta1=float(beta1), beta2=float(beta2),
                       eps=float(group["eps"]), step=step)


def initial_state(upd: ParamUpdate, param: Tensor, state: dict[str, Any],
                  zeros: Any = torch.zeros_like) -> list[Tensor]:
    """The state tensors the update reads: the optimizer's own, or `zeros(param)` when it has
    none yet (capture passes a fake-tensor factory, so no real memory is allocated)."""
    return [state[n] if n in state else zeros(param) for n in upd.state_names]


def apply(upd: ParamUpdate, p: Tensor, g: Tensor,
          state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """One update, out of place: (new parameter, new state tensors in `state_names` order)."""
    if upd.kind == "SGD":
        if upd.weight_decay:
            g = g.add(p, alpha=upd.weight_decay)
        new_state: list[Tensor] = []
        if upd.momentum:
            buf = state[0].mul(upd.momentum).add(g, alpha=1 - upd.dampening)
            g = g.add(buf, alpha=upd.momentum) if upd.nesterov else buf
            new_state = [buf]
        return p.add(g, alpha=-upd.lr), new_state
    m, v = state
    if upd.kind == "AdamW":
        p = p.mul(1 - upd.lr * upd.weight_decay)
    elif upd.weight_decay:
        g = g.add(p, alpha=upd.weight_decay)
    m = torch.lerp(m, g, 1 - upd.beta1)
    v = v.mul(upd.beta2).addcmul(g, g, value=1 - upd.beta2)
    step_size = upd.lr / (1 - upd.beta1**upd.step)
    bc2_sqrt = (1 - upd.beta2**upd.step) ** 0.5
    denom = v.sqrt().div(bc2_sqrt).add(upd.eps)
    return p.addcdiv(m, denom, value=-step_size), [m, v]
