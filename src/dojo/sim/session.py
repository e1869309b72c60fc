"""The whole path from a model name to a simulated step: build -> capture -> compile -> simulate.

Captures are cached per (model, overrides, micro-batch, sequence) within a process, since the
same model is often simulated under many plans (validation, sweeps, plan search), and so is the
per-device work compiled from a capture (per tensor split, precision and fusion).

The plan search needs the work at many micro-batch sizes. Every size in a captured graph (tensor
dimensions and bytes, op FLOPs and bytes) either stays fixed or grows with the micro-batch: for the
models of the zoo it is affine in the micro-batch size b from b = 2 on (at b = 1 PyTorch elides
some broadcasts, so the ops differ). `graph_at(..., derive=True)` therefore captures b = 2, 3 and
4 once, extrapolates g(b) = g(2) + (g(3) - g(2)) (b - 2) field by field, and uses that only if it
reproduces the capture at b = 4 exactly (a size of degree 2 or less in b that is affine at three
points is affine); otherwise, and for b <= 4, it captures b itself. The work is then compiled
from that graph as from any capture. A test compares derived and captured graphs for the zoo.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dojo.compiler.context import local_seq, ring_work
from dojo.compiler.experts import MoeLayout, moe_layout
from dojo.compiler.fp8 import fp8_activations, fp8_dropped_change
from dojo.compiler.mapping import device_count
from dojo.compiler.program import PRECISION_BYTES, Program, compile_program
from dojo.compiler.recompute import apply_policy
from dojo.compiler.replicated import with_whole_experts
from dojo.compiler.work import ModelWork, SectionWork, main_block, model_work
from dojo.errors import ConfigError
from dojo.graph import Graph
from dojo.hardware.loader import load_system
from dojo.hardware.spec import SystemSpec
from dojo.plan.plan import ModelShape, Plan, check_fit, expert_tp, validate_plan
from dojo.plan.policies import policy_classes, policy_modules
from dojo.sim.simulate import Result, simulate

_CAPTURES: dict[tuple[Any, ...], tuple[Graph, Any]] = {}
_MODULES: dict[tuple[Any, ...], Any] = {}   # meta modules `captured` built, for its next batch
_WORKS: dict[tuple[Any, ...], ModelWork] = {}
_AFFINE: dict[tuple[Any, ...], bool] = {}
MAX_BATCH = 2**53   # samples: every count stays an exact float, every time finite
MAX_SEQ = 2**31     # tokens per sample (PyTorch's int32 position range)


@dataclass(frozen=True)
class Simulated:
    program: Program
    result: Result
    graph: Graph


def check_inputs(batch: int, seq: int | None = None, devices: int | None = None) -> None:
    """Refuse sizes no step can have: a global batch below 1 sample or beyond 2^53, a sequence
    below 1 token or beyond 2^31, fewer than 1 device. Every command reaches the simulator
    through here (`compile_model`, `simulate_model`, `best_plan`)."""
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise ConfigError("--batch", "batch", batch,
                          f"a whole number of samples from 1 to 2^53 = {MAX_BATCH}")
    if seq is not None and not 1 <= seq <= MAX_SEQ:
        raise ConfigError("--seq", "seq", seq, f"a sequence length from 1 to 2^31 = {MAX_SEQ}")
    if devices is not None and devices < 1:
        raise ConfigError("--devices", "devices", devices, "at least 1 device")


def captured(model: str, overrides: Mapping[str, Any], batch: int, seq: int | None
             ) -> tuple[Graph, Any]:
    """(graph, model config) of one training step at micro-batch `batch`, on fake tensors."""
    key = (model, tuple(sorted(overrides.items())), batch, seq)
    if key not in _CAPTURES:
        import torch

        from dojo.capture import capture
        from dojo.models import build

        torch.set_num_threads(1)
        built = key[:2]   # the module depends on neither the batch nor the sequence
        bundle = build(model, batch=batch, seq=seq, device="meta", overrides=dict(overrides),
                       module=_MODULES.get(built))
        _MODULES[built] = bundle.model
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
                      kv_heads=get("kv_heads"), experts=get("experts"))


def graph_at(model: str, overrides: Mapping[str, Any], mb: int, seq: int | None,
             derive: bool = False) -> tuple[Graph, Any]:
    """(graph, config) at micro-batch `mb`: captured, or with `derive` extrapolated from the
    captures at 2, 3 and 4 samples when that is exact (module docstring); cached."""
    key = (model, tuple(sorted(overrides.items())), mb, seq)
    if key in _CAPTURES or not derive or mb <= 4 or not _affine_ok(model, overrides, seq):
        return captured(model, overrides, mb, seq)
    (g2, config), (g3, _) = (captured(model, overrides, b, seq) for b in (2, 3))
    _CAPTURES[key] = (_affine(g2, g3, mb - 2), config)
    return _CAPTURES[key]


def plan_graph(model: str, overrides: Mapping[str, Any], mb: int, seq: int | None, plan: Plan,
               derive: bool = False) -> Graph:
    """`graph_at` for one rank's tokens under `plan` (seq / cp), its routed experts declared
    whole over tp when the plan folds tp into the expert ranks (etp=1 < tp;
    `replicated.with_whole_experts`)."""
    graph, _ = graph_at(model, overrides, mb, context_seq(model, overrides, plan, seq), derive)
    return with_whole_experts(graph) if expert_tp(plan) == 1 < plan.tp else graph


def work_for(model: str, overrides: Mapping[str, Any], mb: int, seq: int | None, plan: Plan,
             derive: bool = False, *, fused_attention: bool) -> ModelWork:
    """The per-device work of one micro-batch of `mb` samples under `plan`'s tensor split,
    precision and fusion, compiled from `graph_at` (cached). `fused_attention`: whether the
    device runs attention as one fused kernel (`fuses_attention`; `model_work`)."""
    scale = PRECISION_BYTES[plan.precision]["activation_scale"]
    key: tuple[Any, ...] = (model, tuple(sorted(overrides.items())), seq, mb, plan.tp, plan.sp,
                            scale, plan.fusion, fused_attention, plan.cp, expert_tp(plan))
    if key not in _WORKS:
        # With context parallelism a rank's work is that of seq/cp tokens, its attention run
        # once per ring step (`dojo.compiler.context`).
        graph = plan_graph(model, overrides, mb, seq, plan, derive)
        _WORKS[key] = ring_work(model_work(graph, tp=plan.tp, sp=plan.sp, scale=scale,
                                           fuse=plan.fusion, fused_attention=fused_attention),
                                plan.cp, plan.tp)
    # FP8 activations (compiler.fp8), then an op-level recompute policy (compiler.recompute)
    # or Megatron's module recompute (compiler.modules)
    classes = policy_classes(plan.recompute)
    steps = ["fp8"] if plan.precision == "fp8" else []
    steps += [plan.recompute] if classes is not None else []
    for step in steps:
        key, parent = (*key, step), key
        if key not in _WORKS:
            graph = plan_graph(model, overrides, mb, seq, plan, derive)
            _WORKS[key] = (fp8_activations(_WORKS[parent], graph, plan.tp, plan.sp, scale,
                                           fused_attention) if step == "fp8" else
                           apply_policy(_WORKS[parent], graph, classes or frozenset(), plan.tp,
                                        plan.sp, scale, fused_attention))
    modules = policy_modules(plan.recompute)
    if modules is not None:
        key, parent = (*key, plan.recompute), key
        if key not in _WORKS:
            graph = plan_graph(model, overrides, mb, seq, plan, derive)
            mine = ring_work(model_work(graph, tp=plan.tp, sp=plan.sp, scale=scale,
                                        fuse=plan.fusion, fused_attention=fused_attention,
                                        modules=modules), plan.cp, plan.tp)
            if plan.precision == "fp8" and mine.block is not None:  # dropped as FP8 keeps them
                dropped = mine.block.selective_saved + fp8_dropped_change(
                    graph, modules, plan.tp, plan.sp, scale, fused_attention)
                mine = dataclasses.replace(mine, block=dataclasses.replace(
                    mine.block, selective_saved=dropped))
            _WORKS[key] = with_modules(_WORKS[parent], mine)
    return _WORKS[key]


def with_modules(work: ModelWork, mine: ModelWork) -> ModelWork:
    """`work` (ready but for recompute, FP8 included) with its sections' selective slots and
    replayed tp collectives taken from `mine`, the same capture compiled under a module policy
    (`compiler.modules`; under FP8 `work_for` has sized its block's dropped bytes as FP8 keeps
    them, `compiler.fp8.fp8_dropped_change`)."""
    def section(sec: SectionWork, new: SectionWork) -> SectionWork:
        return dataclasses.replace(sec, recompute_selective=new.recompute_selective,
                                   selective_saved=new.selective_saved,
                                   tp_recompute=new.tp_recompute)

    block = (section(work.block, mine.block) if work.block is not None and
             mine.block is not None else work.block)
    return dataclasses.replace(work, pre=section(work.pre, mine.pre), block=block,
                               post=section(work.post, mine.post))


def context_seq(model: str, overrides: Mapping[str, Any], plan: Plan, seq: int | None
                ) -> int | None:
    """Tokens per sample one rank captures: `seq` (None: the model's context) without context
    parallelism, seq/cp with it (refused for models that are not token sequences, for a
    sequence beyond the model's context, as without cp, and for one that does not cut into 2 cp
    chunks)."""
    if plan.cp == 1:
        return seq
    from dojo.errors import DojoError
    from dojo.models import MODELS, check_model, make_config

    try:
        sequence = MODELS.get(model).sequence
    except DojoError:
        sequence = False
    if not sequence:
        raise ConfigError("--plan", "cp", plan.cp, f"1 for model '{model}': context parallelism "
                          "splits token sequences, and it is not a sequence model of the zoo")
    check_model(model, overrides, seq)
    return local_seq(seq if seq is not None else int(make_config(model, overrides).seq), plan.cp)


def kv_width(config: Any, tp: int) -> int:
    """Elements of K (or V) per token on one tp rank: kv_heads / tp x head_dim (kv_heads =
    heads without grouped-query attention)."""
    heads = int(getattr(config, "heads", 0) or 0)
    if not heads:
        return 0
    kv = int(getattr(config, "kv_heads", 0) or heads)
    return kv // tp * (int(config.hidden) // heads)


def fuses_attention(spec: SystemSpec) -> bool:
    """Whether `spec`'s devices run `scaled_dot_product_attention` as one fused kernel whatever
    its dropout: GPUs (FlashAttention) and D1 do; a CPU runs PyTorch's unfused math fallback
    whenever dropout is on, as its capture recorded it."""
    return spec.leaf.cost_model != "cpu"


def _affine_ok(model: str, overrides: Mapping[str, Any], seq: int | None) -> bool:
    key = (model, tuple(sorted(overrides.items())), seq)
    if key not in _AFFINE:
        g2, g3, g4 = (captured(model, overrides, b, seq)[0] for b in (2, 3, 4))
        try:
            _AFFINE[key] = _affine(g2, g3, 2) == g4
        except _NotAffine:
            _AFFINE[key] = False
    return _AFFINE[key]


class _NotAffine(Exception):
    """Two graphs differ in structure (op count, targets), not only in sizes."""


def _affine(a: Any, b: Any, k: int) -> Any:
    """a + (b - a) k field by field: `a` and `b` are values at consecutive micro-batch sizes."""
    if type(a) is int and type(b) is int:  # the common case first (not bool)
        return a + (b - a) * k
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        names = _field_names(type(a))
        return type(a)(**{n: _affine(getattr(a, n), getattr(b, n), k) for n in names})
    if isinstance(a, tuple):
        if not isinstance(b, tuple) or len(a) != len(b):
            raise _NotAffine
        if all(type(x) is int for x in a) and all(type(y) is int for y in b):  # shapes, ids
            return tuple(x + (y - x) * k for x, y in zip(a, b))
        return tuple(_affine(x, y, k) for x, y in zip(a, b))
    if isinstance(a, str) and isinstance(b, str) and a != b:
        return _affine_text(a, b, k)
    if a is None or b is None or isinstance(a, (str, bool)):
        if a != b:
            raise _NotAffine
        return a
    return a + (b - a) * k


@functools.cache
def _field_names(kind: type) -> tuple[str, ...]:
    """The fields of dataclass type `kind` (the graph's few types), in order."""
    return tuple(f.name for f in dataclasses.fields(kind))


def _affine_text(a: str, b: str, k: int) -> str:
    """The numbers in a text (a graph's recorded input shapes, "(2, 64)") extrapolated."""
    pa, pb = re.split(r"(\d+)", a), re.split(r"(\d+)", b)
    if len(pa) != len(pb) or pa[0::2] != pb[0::2]:
        raise _NotAffine
    return "".join(x if i % 2 == 0 else str(_affine(int(x), int(y), k))
                   for i, (x, y) in enumerate(zip(pa, pb)))


def compile_model(model: str, overrides: Mapping[str, Any], spec: SystemSpec, plan: Plan,
                  batch: int, seq: int | None = None, derive: bool = False
                  ) -> tuple[Program, Graph]:
    """Capture `model` at the plan's micro-batch and compile it for `plan` on `spec`
    (the plan is not validated here; `simulate_model` does that). `derive`: see `work_for`."""
    check_inputs(batch, seq)
    local = context_seq(model, overrides, plan, seq)
    graph, config = graph_at(model, overrides, plan.mb, local, derive)
    work = work_for(model, overrides, plan.mb, seq, plan, derive,
                    fused_attention=fuses_attention(spec))
    tokens = seq if seq is not None else getattr(config, "seq", None)
    is_sequence = any(t.role == "input" and t.dtype.startswith("int") for t in graph.tensors)
    program = compile_program(work, plan, spec, batch,
                              tokens_per_sample=int(tokens) if tokens and is_sequence else None,
                              kv_width=kv_width(config, plan.tp),
                              moe=experts_of(graph, config, plan.mb, local))
    return program, graph


def experts_of(graph: Graph, config: Any, mb: int, seq: int | None) -> MoeLayout | None:
    """The routed experts of `graph`, captured at `mb` samples of `seq` tokens (None: the
    model's context), for expert parallelism (`compiler.experts.moe_layout`); None without."""
    key = (id(graph), mb, seq)
    held = _LAYOUTS.get(key)
    if held is None or held[0] is not graph:   # cached per capture (the search asks often)
        tokens = seq if seq is not None else getattr(config, "seq", None)
        is_sequence = any(t.role == "input" and t.dtype.startswith("int") for t in graph.tensors)
        if len(_LAYOUTS) >= 256:
            _LAYOUTS.clear()
        held = _LAYOUTS[key] = (graph, moe_layout(graph, config, mb * int(tokens)
                                                  if tokens and is_sequence else mb))
    return held[1]


_LAYOUTS: dict[tuple[int, int, int | None], tuple[Graph, MoeLayout | None]] = {}


def simulate_model(model: str, overrides: Mapping[str, Any], system: SystemSpec | str,
                   plan: Plan, batch: int, seq: int | None = None,
                   devices: int | None = None) -> Simulated:
    """Simulate one step of `model` (global batch `batch`) under `plan` on `system`."""
    check_inputs(batch, seq, devices)
    spec = load_system(system, devices=devices) if isinstance(system, str) else system
    check_fit(plan, device_count(spec), batch)  # before the capture at the plan's micro-batch
    graph, config = captured(model, overrides, plan.mb, context_seq(model, overrides, plan, seq))
    validate_plan(plan, model_shape(graph, config), device_count(spec), batch)
    program, graph = compile_model(model, overrides, spec, plan, batch, seq)
    return Simulated(program=program, result=simulate(program), graph=graph)
