"""`torch.compile(model, backend="dojo")`: simulate each captured graph on a Dojo system, apply
the precision policy, and run the graph.

Registered under the name "dojo" in two ways: the `torch_dynamo_backends` entry point in
pyproject.toml (found by torch once the package is installed), and `register_backend` when this
module is imported (works in an editable checkout: `import dojo.runtime.backend`).

For every graph dynamo hands over, the backend
1. captures it as a dojo IR graph (forward, backward and an SGD update of the graph's parameters,
   on meta tensors: nothing is computed),
2. compiles and simulates one step under the configured system and plan (`configure`), records a
   `GraphSimulation` (see `last_simulations()`) and logs the simulated step time on the
   "dojo.runtime.backend" logger at INFO,
3. rewrites the graph's linear and conv2d calls to round their operands under the precision
   policy (FP32 accumulation and master weights, as `dojo.numerics.apply_policy`), and returns
   the graph's eager forward. Other matmuls (attention, `@`) stay FP32; convolutions the policies
   do not cover (1-D, 3-D, transposed) are refused by name under a non-fp32 policy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dojo.errors import DojoError
from dojo.numerics import get_policy, round_operand
from dojo.numerics.modules import LayerNumerics
from dojo.plan.plan import parse_plan

LOG = logging.getLogger("dojo.runtime.backend")
LINEAR = {torch._C._nn.linear, F.linear}
CONV2D = {torch.conv2d, F.conv2d}
UNCOVERED = {torch.conv1d: "conv1d", torch.conv3d: "conv3d", F.conv_transpose1d: "conv_transpose1d",
             F.conv_transpose2d: "conv_transpose2d", F.conv_transpose3d: "conv_transpose3d",
             F.bilinear: "bilinear"}


@dataclass(frozen=True)
class BackendConfig:
    """What the backend simulates on and how: system name, plan text (its `precision` field is
    overridden by `precision` when that is set), precision policy name."""

    system: str = "d1"
    plan: str = "dp=1"
    precision: str = "fp32"


@dataclass(frozen=True)
class GraphSimulation:
    """One compiled graph: its index in this process, op count, simulated step (seconds), and
    the `Simulated`-style pieces (program, result)."""

    index: int
    ops: int
    step_time_s: float
    program: Any
    result: Any


_STATE: dict[str, Any] = {"config": BackendConfig(), "simulations": []}


def configure(system: str | None = None, plan: str | None = None,
              precision: str | None = None) -> BackendConfig:
    """Set what later compiled graphs are simulated on; returns the new configuration.
    Unknown systems and policies are reported when a graph compiles (the registries list names)."""
    old: BackendConfig = _STATE["config"]
    new = BackendConfig(system=system or old.system, plan=plan or old.plan,
                        precision=precision or old.precision)
    parse_plan(new.plan, "backend plan")  # bad plan text fails here, with the field named
    get_policy(new.precision)
    _STATE["config"] = new
    return new


def last_simulations() -> list[GraphSimulation]:
    """Every graph compiled in this process so far, oldest first."""
    return list(_STATE["simulations"])


def reset() -> None:
    """Forget recorded simulations and return to the default configuration."""
    _STATE["config"] = BackendConfig()
    _STATE["simulations"] = []


class _GraphStep(nn.Module):
    """The dynamo graph as a module whose Parameter inputs are its own (meta) parameters."""

    def __init__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> None:
        super().__init__()
        self.gm = gm
        self.is_param = [isinstance(t, nn.Parameter) for t in example_inputs]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty_like(t, device="meta")) for t in example_inputs
            if isinstance(t, nn.Parameter))

    def forward(self, *acts: Tensor) -> Any:
        params, rest = iter(self.weights), iter(acts)
        return self.gm(*[next(params) if p else next(rest) for p in self.is_param])


def _loss(out: Any) -> Tensor:
    outs = out if isinstance(out, tuple | list) else (out,)
    floats = [o.float().sum() for o in outs if isinstance(o, Tensor) and o.is_floating_point()]
    if not floats:
        raise DojoError("dojo backend: the graph has no floating-point output to train")
    return torch.stack(floats).sum()


def simulate_graph(gm: torch.fx.GraphModule, example_inputs: list[Any],
                   config: BackendConfig) -> GraphSimulation:
    """Capture `gm` (forward + backward + SGD) and simulate one step under `config`."""
    from dojo.capture import capture
    from dojo.compiler.program import PRECISION_BYTES, compile_program
    from dojo.compiler.work import model_work
    from dojo.hardware.loader import load_system
    from dojo.sim.session import fuses_attention
    from dojo.sim.simulate import simulate

    step = _GraphStep(gm, example_inputs)
    acts = [torch.empty_like(t, device="meta") for t, p in zip(example_inputs, step.is_param)
            if not p]
    captured = capture(step, acts, _loss, torch.optim.SGD(step.weights, lr=0.1),
                       name=f"dynamo_graph_{len(_STATE['simulations'])}")
    plan = parse_plan(f"{config.plan},precision={config.precision}", "backend plan")
    spec = load_system(config.system)
    # The same work the session compiles for this plan and system (fusion, attention kernel).
    work = model_work(captured.graph, tp=plan.tp, sp=plan.sp,
                      scale=PRECISION_BYTES[plan.precision]["activation_scale"],
                      fuse=plan.fusion, fused_attention=fuses_attention(spec))
    program = compile_program(work, plan, spec, batch=plan.dp * plan.mb)
    result = simulate(program)
    return GraphSimulation(index=len(_STATE["simulations"]), ops=len(captured.graph.ops),
                           step_time_s=result.step_time_s, program=program, result=result)


class _PolicyCall(nn.Module):
    """A linear/conv2d call whose operands are rounded as a policy layer rounds them."""

    def __init__(self, fn: Any, policy: str, seed: int) -> None:
        super().__init__()
        self.fn = fn
        self.numerics = LayerNumerics(get_policy(policy), seed)

    def forward(self, x: Tensor, w: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        n = self.numerics
        y = self.fn(round_operand(x, n.activations), round_operand(w, n.weights), *args, **kwargs)
        return n.result(y)


def apply_policy_to_graph(gm: torch.fx.GraphModule, policy: str) -> int:
    """Route the graph's linear/conv2d calls through `policy`; returns how many were rewritten.
    DojoError naming the node for a matmul-like call the policy cannot round."""
    p = get_policy(policy)
    if all(r is None for r in (p.activations, p.weights, p.grads, p.outputs)):
        return 0
    count = 0
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in UNCOVERED:
            raise DojoError(f"precision policy '{p.name}' cannot handle op "
                            f"{UNCOVERED[node.target]} (graph node '{node.name}'): it rounds "
                            "linear and conv2d only; use precision fp32")
        if node.target in LINEAR or node.target in CONV2D:
            name = f"dojo_policy_{count}"
            gm.add_submodule(name, _PolicyCall(node.target, p.name, seed=count))
            node.op, node.target = "call_module", name
            count += 1
    gm.recompile()
    return count


def dojo_backend(gm: torch.fx.GraphModule, example_inputs: list[Any], **_: Any) -> Any:
    """The torch.compile backend (see the module docstring)."""
    config: BackendConfig = _STATE["config"]
    sim = simulate_graph(gm, example_inputs, config)
    _STATE["simulations"].append(sim)
    LOG.info("dojo: graph %d (%d ops) simulated on %s, plan %s, %s: %.6g s per step",
             sim.index, sim.ops, config.system, config.plan, config.precision, sim.step_time_s)
    apply_policy_to_graph(gm, config.precision)
    return gm.forward


def _register() -> None:
    from torch._dynamo import list_backends, register_backend

    if "dojo" not in list_backends(exclude_tags=()):
        register_backend(name="dojo")(dojo_backend)


_register()
