"""The whole path from a model name to a simulated step: build -> capture -> compile -> simulate.

Captures are cached per (model, overrides, micro-batch, sequence) within a process, since the
same model is often simulated under many plans (validation, sweeps, plan search).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dojo.compiler.mapping import device_count
from dojo.compiler.program import PRECISION_BYTES, Program, compile_program
from dojo.compiler.work import main_block, model_work
from dojo.graph import Graph
from dojo.hardware.loader import load_system
from dojo.hardware.spec import SystemSpec
from dojo.plan.plan import ModelShape, Plan, validate_plan
from dojo.sim.simulate import Result, simulate

_CAPTURES: dict[tuple[Any, ...], tuple[Graph, Any]] = {}


@dataclass(frozen=True)
class Simulated:
    program: Program
    result: Result
    graph: Graph


def captured(model: str, overrides: Mapping[str, Any], batch: int, seq: int | None
             ) -> tuple[Graph, Any]:
    """(graph, model config) of one training step at micro-batch `batch`, on fake tensors."""
    key = (model, tuple(sorted(overrides.items())), batch, seq)
    if key not in _CAPTURES:
        import torch

        from dojo.capture import capture
        from dojo.models import build

        torch.set_num_threads(1)
        bundle = build(model, batch=batch, seq=seq, device="meta", overrides=dict(overrides))
        opt = bundle.make_optimizer(bundle.model.parameters())
        cap = capture(bundle.model, bundle.example_inputs, bundle.loss_fn, opt,
                      targets=bundle.targets, name=model)
        _CAPTURES[key] = (cap.graph, bundle.config)
    return _CAPTURES[key]


def model_shape(graph: Graph, config: Any) -> ModelShape:
    """What the plan must divide: the main block's repeat count, heads and widths."""
    block = main_block(graph)
    layers = graph.repeat_of(block) if block else 1
    def get(key: str) -> int:
        return int(getattr(config, key, 0) or 0)

    return ModelShape(layers=layers, heads=get("heads"), hidden=get("hidden"), ffn=get("ffn"),
                      kv_heads=get("kv_heads"))


def compile_model(model: str, overrides: Mapping[str, Any], spec: SystemSpec, plan: Plan,
                  batch: int, seq: int | None = None) -> tuple[Program, Graph]:
    """Capture `model` at the plan's micro-batch and compile it for `plan` on `spec`
    (the plan is not validated here; `simulate_model` does that)."""
    graph, config = captured(model, overrides, plan.mb, seq)
    scale = PRECISION_BYTES[plan.precision]["activation_scale"]
    work = model_work(graph, tp=plan.tp, sp=plan.sp, scale=scale, fuse=plan.fusion)
    tokens = seq if seq is not None else getattr(config, "seq", None)
    is_sequence = any(t.role == "input" and t.dtype.startswith("int") for t in graph.tensors)
    program = compile_program(work, plan, spec, batch,
                              tokens_per_sample=int(tokens) if tokens and is_sequence else None)
    return program, graph


def simulate_model(model: str, overrides: Mapping[str, Any], system: SystemSpec | str,
                   plan: Plan, batch: int, seq: int | None = None,
                   devices: int | None = None) -> Simulated:
    """Simulate one step of `model` (global batch `batch`) under `plan` on `system`."""
    spec = load_system(system, devices=devices) if isinstance(system, str) else system
    graph, config = captured(model, overrides, plan.mb, seq)
    validate_plan(plan, model_shape(graph, config), device_count(spec), batch)
    program, graph = compile_model(model, overrides, spec, plan, batch, seq)
    return Simulated(program=program, result=simulate(program), graph=graph)
