"""Cold call sites and the exact GELU's oneDNN setup on an eager CPU (issue 14 item 4,
docs/benchmarks.md sixteenth round): which ops of a pass find their code cold
(`dojo.compiler.code`), what the device charges them (closed form), and which GELUs go
through oneDNN's eltwise primitive (PyTorch's own dispatch, checked against
`torch.backends.mkldnn`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
from bench_module import load_bench

from dojo.capture import capture
from dojo.compiler import fusion
from dojo.compiler.code import code_sites, cold_marks, hot, instances, op_key, section_keys
from dojo.compiler.eager_cpu import eltwise_calls
from dojo.compiler.work import OpCost
from dojo.graph import Op
from dojo.hardware import load_system
from dojo.plan import parse_plan
from dojo.sim.costs import DeviceModel, load_calibration
from dojo.sim.eager import code_in_cache, code_keys
from dojo.sim.session import compile_model
from dojo.sim.simulate import device_for, simulate


def _device(**fields: Any) -> DeviceModel:
    cal = replace(load_calibration("cpu"), eager=True, **fields)
    return DeviceModel(peak_flops=1e11, vector_flops=1e11, mem_bytes_per_s=1e10, calibration=cal)


class _Block(torch.nn.Module):
    def __init__(self, width: int, approximate: str = "none") -> None:
        super().__init__()
        self.fc = torch.nn.Linear(width, width)
        self.act = torch.nn.GELU(approximate=approximate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.fc(x))


def _graph(blocks: int, approximate: str = "none") -> Any:
    model = torch.nn.Sequential(*(_Block(8, approximate) for _ in range(blocks)))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    return capture(model, (torch.randn(2, 8),), lambda y: y.square().mean(), opt, name="t",
                   repeat_blocks=False).graph


def _grouped(graph: Any) -> list[tuple[list[Op], str]]:
    return fusion.groups(graph, ["all"] * len(graph.ops), "none")


def test_a_repeated_modules_call_sites_are_cold_once_per_pass() -> None:
    """Two and five identical blocks run the same code: the pass's cold calls (the first
    block's, the loss's) do not grow with the blocks, its calls do."""
    counts = []
    for blocks in (2, 5):
        graph = _graph(blocks)
        grouped = _grouped(graph)
        marks = cold_marks(grouped)
        per_phase = {"forward": 0, "backward": 0}
        for (group, _), (other, pointwise) in zip(grouped, marks):
            per_phase[group[0].phase] += other + pointwise
        counts.append((per_phase, sum(len(g) for g, _ in grouped),
                       len(section_keys(graph.ops, ["all"] * len(graph.ops))["all"])))
    (cold2, ops2, keys2), (cold5, ops5, keys5) = counts
    assert cold2 == cold5 and keys2 == keys5
    assert ops5 > ops2 > sum(cold2.values())


def test_call_sites_drop_repeated_module_indices() -> None:
    """`blocks.3.attn.qkv` runs `blocks.0.attn.qkv`'s code; a line outside any module is its
    own site; a backward op's site is its kernel."""
    op = Op(0, "aten.mm.default", "forward", (), (), 0, 0, 0, "flop_counter",
            layer="blocks.3.attn.qkv")
    assert op_key(op, 7) == op_key(replace(op, layer="blocks.0.attn.qkv"), 9)
    assert op_key(op, 7) != op_key(replace(op, layer="head"), 7)
    free = replace(op, layer=None)
    assert op_key(free, 1) != op_key(free, 2)
    back = replace(op, phase="backward", layer=None)
    assert op_key(back, 1) == op_key(back, 2) == "aten.mm.default"


class _TwoNorms(torch.nn.Module):
    """Two LayerNorms at different paths: one class, one code."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.fc, self.second = (torch.nn.LayerNorm(8), torch.nn.Linear(8, 8),
                                             torch.nn.LayerNorm(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.fc(self.first(x)))


def test_modules_of_one_class_share_their_call_sites() -> None:
    """The capture records each module path's class (`code_sites`); the second LayerNorm's op
    is hot, as the second of two identical blocks' would be, while without the classes
    (paths only) it is a site of its own."""
    model = _TwoNorms()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    graph = capture(model, (torch.randn(2, 8),), lambda y: y.square().mean(), opt,
                    name="t", repeat_blocks=False).graph
    sites = code_sites(graph)
    assert sites["first"] == sites["second"] == "torch.nn.modules.normalization.LayerNorm"
    grouped = _grouped(graph)
    norms = [i for i, (g, _) in enumerate(grouped)
             if g[0].phase == "forward" and "layer_norm" in g[0].target]
    assert len(norms) == 2
    with_classes, paths_only = cold_marks(grouped, sites), cold_marks(grouped)
    assert [with_classes[i][0] for i in norms] == [1, 0]
    assert [paths_only[i][0] for i in norms] == [1, 1]


def test_a_chunks_later_block_instances_are_hot() -> None:
    cold = OpCost("vector", 1.0, 8.0, "aten.add.Tensor", cold_calls=1, cold_pointwise=2)
    out = instances((cold,), 3)
    assert out[0] is cold and out[1] == out[2] == hot(cold)
    assert (out[1].cold_calls, out[1].cold_pointwise) == (0, 0)
    assert instances((cold,), 0) == []


def test_a_cold_call_site_costs_its_figure_times_the_code_share() -> None:
    """Closed form: 2 cold calls and 3 cold elementwise calls at share 0.5 add
    0.5 (2 x 4 us + 3 x 1 us) forward, and the backward figures in the backward."""
    dev = replace(_device(cold_call_s=4e-6, cold_pointwise_s=1e-6, cold_call_backward_s=6e-6,
                          cold_pointwise_backward_s=2e-6), code_cold=0.5)
    op = OpCost("vector", 0.0, 64.0, "fused[5]", pointwise=3, cold_calls=2, cold_pointwise=3)
    assert dev.op_time(op) - dev.op_time(hot(op)) == pytest.approx(0.5 * 11e-6, rel=1e-9)
    back = dev.for_phase("backward")
    assert back.op_time(op) - back.op_time(hot(op)) == pytest.approx(0.5 * 18e-6, rel=1e-9)
    assert replace(dev, code_cold=0.0).op_time(op) == dev.op_time(hot(op))


def test_a_onednn_call_pays_its_own_cold_figure_on_every_call() -> None:
    """Closed form: a convolution with 2 oneDNN calls and an exact GELU's eltwise call at share
    0.5 add 0.5 (2 x 20 + 6 us) forward and the backward figures in the backward, hot or not
    (each primitive's code is its own; a repeat of a call site pays it too)."""
    dev = replace(_device(cold_library_s=20e-6, cold_library_backward_s=30e-6,
                          cold_eltwise_s=6e-6, cold_eltwise_backward_s=9e-6), code_cold=0.5)
    conv = OpCost("matrix", 1e3, 1e3, "aten.convolution.default", library_calls=2)
    gelu = OpCost("vector", 0.0, 64.0, "aten.gelu.default", pointwise=1, eltwise_calls=1)
    bare = replace(dev, code_cold=0.0)
    assert dev.op_time(conv) - bare.op_time(conv) == pytest.approx(0.5 * 40e-6, rel=1e-9)
    assert dev.op_time(gelu) - bare.op_time(gelu) == pytest.approx(0.5 * 6e-6, rel=1e-9)
    back, bare_back = dev.for_phase("backward"), bare.for_phase("backward")
    assert back.op_time(conv) - bare_back.op_time(conv) == pytest.approx(0.5 * 60e-6, rel=1e-9)
    assert back.op_time(gelu) - bare_back.op_time(gelu) == pytest.approx(0.5 * 9e-6, rel=1e-9)
    assert dev.op_time(hot(conv)) == dev.op_time(conv)


def test_the_step_pays_every_onednn_call_cold() -> None:
    """vit-b16's small preset (a oneDNN patch convolution, an exact GELU per block): the
    simulated step with only oneDNN cold figures against without is micro-batches x each
    pass's oneDNN calls at their figures, the second block's GELU included (closed form)."""
    program = _program("vit-b16", {"image": 32, "patch": 8, "layers": 2, "hidden": 64,
                                    "heads": 4, "ffn": 128, "classes": 10})
    zero = {f: 0.0 for f in ("cold_call_s", "cold_pointwise_s", "cold_matrix_s",
                             "cold_call_backward_s", "cold_pointwise_backward_s",
                             "cold_matrix_backward_s")}
    figures = {**zero, "cold_library_s": 3e-5, "cold_library_backward_s": 2e-5,
               "cold_eltwise_s": 5e-6, "cold_eltwise_backward_s": 7e-6,
               "code_keys_hot": 0.0, "code_keys_cold": 1.0}
    base = device_for(program.system, "fp32", 1)
    dev = code_in_cache(program, replace(base, calibration=replace(base.calibration, **figures)))
    chunk = program.chunks[0]
    forward = [(o.library_calls, o.eltwise_calls) for o in chunk.forward]
    assert sum(e for _, e in forward) == 2 and sum(c for c, _ in forward) >= 1
    per_pass = (sum(3e-5 * c + 5e-6 * e for c, e in forward)
                + sum(2e-5 * o.library_calls + 7e-6 * o.eltwise_calls for o in chunk.backward))
    cold = simulate(program, prepare_with(program, dev)).step_time_s
    warm = simulate(program, prepare_with(program, replace(dev, code_cold=0.0))).step_time_s
    assert cold - warm == pytest.approx(program.microbatches * per_pass, rel=1e-6)


def test_every_tensor_parallel_region_pays_its_cold_figure() -> None:
    """vit-b16's small preset under tp=2 (no vocabulary-parallel parts): the step with
    `cold_region_s` against without, the waits' jitter at 0 (it would spread the regions'
    time over the waits), is micro-batches x each pass's f/g regions x the figure x the
    code share (closed form)."""
    program = _program("vit-b16", {"image": 32, "patch": 8, "layers": 2, "hidden": 64,
                                    "heads": 4, "ffn": 128, "classes": 10}, "tp=2")
    chunk = program.chunks[0]
    regions = len(chunk.tp_forward) + len(chunk.tp_backward)
    assert regions >= 8 and not chunk.tp_recompute  # two blocks: an f and a g each, per phase
    base = device_for(program.system, "fp32", 1)
    dev = replace(base, calibration=replace(base.calibration, lockstep_jitter=0.0), code_cold=0.5)
    cold = replace(dev, calibration=replace(dev.calibration, cold_region_s=9e-6))
    bare = replace(dev, calibration=replace(dev.calibration, cold_region_s=0.0))
    step = [simulate(program, prepare_with(program, d)).step_time_s for d in (cold, bare)]
    assert step[0] - step[1] == pytest.approx(program.microbatches * regions * 0.5 * 9e-6,
                                              rel=1e-6)


def _program(model: str, overrides: dict[str, Any], plan: str = "dp=1") -> Any:
    parsed = parse_plan(f"{plan},precision=fp32")
    spec = load_system("cpu", devices=parsed.devices)
    return compile_model(model, overrides, spec, parsed, 4)[0]


def test_the_code_share_ramps_with_the_steps_call_sites() -> None:
    """0 up to `code_keys_hot` call sites, 1 from `code_keys_cold`, linear between."""
    program = _program("gpt", {"layers": 2, "hidden": 32, "heads": 4, "ffn": 64, "seq": 16,
                               "vocab": 64})
    keys = code_keys(program)
    assert keys > 0
    dev = _device(cold_call_s=1e-6)
    at = {lo: code_in_cache(program, replace(dev, calibration=replace(
        dev.calibration, code_keys_hot=lo, code_keys_cold=lo + 20))).code_cold
        for lo in (keys, keys - 5, keys - 20)}
    assert at == {keys: 0.0, keys - 5: pytest.approx(0.25), keys - 20: 1.0}
    bare = _device(cold_call_s=0.0, cold_pointwise_s=0.0, cold_matrix_s=0.0,
                   cold_library_s=0.0, cold_eltwise_s=0.0, cold_region_s=0.0)
    assert code_in_cache(program, bare).code_cold == 0.0  # no cold figures: unchanged


def test_the_step_pays_each_passes_cold_calls_at_their_figures() -> None:
    """The simulated dp=1 step with cold figures against without: micro-batches x the cold
    calls of one forward and one backward pass at their figures, a matrix op's its own
    (closed form)."""
    program = _program("gpt", {"layers": 3, "hidden": 32, "heads": 4, "ffn": 64, "seq": 16,
                               "vocab": 64})
    figures = {"cold_call_s": 4e-6, "cold_pointwise_s": 1e-6, "cold_call_backward_s": 3e-6,
               "cold_pointwise_backward_s": 2e-6, "cold_matrix_s": 5e-6,
               "cold_matrix_backward_s": 7e-6, "code_keys_hot": 0.0, "code_keys_cold": 1.0,
               "cold_library_s": 0.0, "cold_library_backward_s": 0.0, "cold_eltwise_s": 0.0,
               "cold_eltwise_backward_s": 0.0}
    base = device_for(program.system, "fp32", 1)
    cal = replace(base.calibration, **figures)
    dev = code_in_cache(program, replace(base, calibration=cal))
    assert dev.code_cold == 1.0
    chunk = program.chunks[0]
    per_pass = (sum((5e-6 if o.kind == "matrix" else 4e-6) * o.cold_calls
                    + 1e-6 * o.cold_pointwise for o in chunk.forward)
                + sum((7e-6 if o.kind == "matrix" else 3e-6) * o.cold_calls
                      + 2e-6 * o.cold_pointwise for o in chunk.backward))
    assert per_pass > 0
    cold = simulate(program, prepare_with(program, dev)).step_time_s
    warm = simulate(program, prepare_with(program, replace(dev, code_cold=0.0))).step_time_s
    assert cold - warm == pytest.approx(program.microbatches * per_pass, rel=1e-6)


def prepare_with(program: Any, dev: DeviceModel) -> Any:
    from dojo.sim.memory import device_memory
    from dojo.sim.simulate import all_chunk_times

    memory = device_memory(program)
    return dev, memory, all_chunk_times(program, dev, memory)


def test_exact_gelus_go_through_onednn_and_tanh_ones_do_not() -> None:
    """PyTorch's own dispatch: an exact GELU costs more with oneDNN on than off on a few
    elements (the primitive's setup), the tanh variant the same; the capture marks the
    tanh variant and `eltwise_calls` counts the exact ones, one per block and phase."""
    for blocks in (1, 3):
        exact, tanh = _graph(blocks), _graph(blocks, "tanh")
        for graph, expected in ((exact, blocks), (tanh, 0)):
            for phase in ("forward", "backward"):
                ops = [o for o in graph.ops if o.phase == phase]
                assert eltwise_calls(ops, graph) == expected
        assert any(o.target == "aten.gelu.default[tanh]" for o in tanh.ops)
        assert not any("[tanh]" in o.target for o in exact.ops)


def test_an_exact_gelu_pays_its_eltwise_setup_per_phase() -> None:
    dev = _device(eltwise_call_s=5e-6, eltwise_call_backward_s=9e-6)
    op = OpCost("vector", 8e3, 8e3, "aten.gelu.default", pointwise=1)
    gelu = replace(op, eltwise_calls=1)
    assert dev.op_time(gelu) - dev.op_time(op) == pytest.approx(5e-6, rel=1e-9)
    back = dev.for_phase("backward")
    assert back.op_time(gelu) - back.op_time(op) == pytest.approx(9e-6, rel=1e-9)
    compiled = replace(dev, calibration=replace(dev.calibration, eager=False))
    assert compiled.op_time(gelu) == compiled.op_time(op)


def test_the_calibration_recovers_per_call_figures_from_the_stacks_slowdowns() -> None:
    """`code_costs.per_call`: slowdowns made from known figures (8, 5 and 1 us a matrix,
    other and elementwise call) over four stacks' cold calls give the figures back; where the
    best fit of one is negative it is left out and the others fitted again."""
    per_call = load_bench("code_costs").per_call
    calls = [(2, 2, 3), (3, 2, 2), (1, 3, 4), (0, 1, 12)]
    rows = [(c, 8e-6 * c[0] + 5e-6 * c[1] + 1e-6 * c[2]) for c in calls]
    assert per_call(rows) == pytest.approx((8e-6, 5e-6, 1e-6), rel=1e-9)
    no_other = [(c, 8e-6 * c[0] - 1e-6 * c[1] + 1e-6 * c[2]) for c in calls]
    matrix, other, pointwise = per_call(no_other)
    assert other == 0.0 and matrix > 0 and pointwise > 0


def test_the_eviction_curve_takes_its_evictions_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """`code_costs.eviction_curve` measures every N of `EVICTIONS` in sweeps of `SWEEP_STEPS`
    steps, the N in turn, so a slow spell of the machine falls on all of them alike: a fake
    step that is slow for the first half of all steps leaves every N its fast time."""
    import importlib

    code_costs = load_bench("code_costs")
    eager_stacks = importlib.import_module("eager_stacks")  # what eviction_curve imports
    ran: list[int] = []
    since = [0]

    def tiny() -> list[Any]:
        def op() -> None:
            since[0] += 1
        return [op] * max(code_costs.EVICTIONS)

    def step(model: Any, x: Any) -> tuple[float, float]:
        ran.append(since[0])
        since[0] = 0
        slow = 2.0 if len(ran) <= total // 2 else 1.0
        return slow * (1.0 + ran[-1]), slow * 2.0

    rounds, steps = 2, 30
    total = rounds * steps * len(code_costs.EVICTIONS)
    monkeypatch.setattr(code_costs, "tiny_ops", tiny)
    monkeypatch.setattr(eager_stacks, "_one_step", step)
    curve = code_costs.eviction_curve(None, None, rounds, steps)
    sweep = code_costs.SWEEP_STEPS
    first = [ran[i * sweep] for i in range(len(code_costs.EVICTIONS))]
    assert first == list(code_costs.EVICTIONS) and len(ran) == total
    assert curve == {n: (1.0 + n, 2.0) for n in code_costs.EVICTIONS}


def test_sweeps_of_the_closed_loop_keep_each_rows_fastest_runs() -> None:
    """`bench_cpu_loop.combined`: the fastest wall, CPU and main-thread step over the sweeps
    (a sweep without a CPU figure does not count), every run's figures kept."""
    combined = load_bench("bench_cpu_loop").combined
    a = (0.010, None, 0.009, 0.008, [0.008, 0.009], [0.011, 0.010])
    b = (0.012, 0.011, 0.009, 0.007, [0.007], [0.012])
    assert combined([a, b]) == (0.010, 0.011, 0.009, 0.007, [0.008, 0.009, 0.007],
                                [0.011, 0.010, 0.012])
