"""An eager step's walks over its model's modules (`model.train()`, `zero_grad`): the capture
counts the modules, the program carries the count, and the host time charges
`module_walk_s` per module (bench/module_walk.py measures it)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from bench_module import load_bench

from dojo.capture.params import MODULES_KEY
from dojo.hardware import load_system
from dojo.plan import parse_plan
from dojo.sim.costs import DeviceModel, load_calibration
from dojo.sim.session import compile_model

GPT = {"layers": 3, "hidden": 32, "heads": 4, "ffn": 64, "seq": 16, "vocab": 64}


@pytest.mark.parametrize("model,overrides", [("gpt", GPT), ("resnet18", {})])
def test_the_program_counts_every_module_of_the_model(model: str,
                                                      overrides: dict[str, int]) -> None:
    """The capture's count and the program's are the built nn.Module's own, repeated blocks
    included (the capture folds them; the runtime's walks do not)."""
    from dojo.models import build

    program, graph = compile_model(model, overrides, load_system("cpu"),
                                   parse_plan("dp=1,mb=1,precision=fp32"), batch=1)
    built = build(model, batch=1, overrides=overrides).model
    count = sum(1 for _ in built.modules())
    assert int(dict(graph.meta)[MODULES_KEY]) == count == program.work.modules > 10


def test_host_time_charges_each_module_walk() -> None:
    """modules x `module_walk_s` on top of the optimizer's figures, closed form; nothing on a
    device that is not eager."""
    cal = replace(load_calibration("cpu"), optimizer_step_s=1e-4, optimizer_tensor_s=5e-6,
                  module_walk_s=3e-6)
    dev = DeviceModel(peak_flops=1e11, vector_flops=1e11, mem_bytes_per_s=1e10,
                      calibration=cal)
    assert dev.host_step_time(10, 1, 0.0, modules=40) == pytest.approx(
        1e-4 + 10 * 5e-6 + 40 * 3e-6, rel=1e-12)
    compiled = replace(dev, calibration=replace(cal, eager=False))
    assert compiled.host_step_time(10, 1, 0.0, modules=40) == 0.0


def test_the_walk_benchmark_counts_the_modules_it_walks() -> None:
    """bench/module_walk: a model of N nested parameterless modules walks N + 1 (the root)."""
    walk = load_bench("module_walk")
    seconds, count = walk._walk_s(8, repeat=2)
    assert count == 9 and seconds > 0
