"""Parameter tensors per pipeline stage (`dojo.capture.params`, `dojo.sim.eager`): the count an
eager optimizer loops over on one device, against the model's own modules."""

from __future__ import annotations

from typing import Any

import pytest

from dojo.capture import capture
from dojo.capture.params import param_tensors_by_section
from dojo.compiler.work import _section_of
from dojo.hardware import load_system
from dojo.models import build
from dojo.plan import parse_plan
from dojo.sim.eager import stage_param_tensors
from dojo.sim.session import compile_model


def _sections(name: str) -> dict[str, int]:
    bundle: Any = build(name, batch=2, small=True, device="meta")
    opt = bundle.make_optimizer(bundle.model.parameters())
    graph = capture(bundle.model, bundle.example_inputs, bundle.loss_fn, opt,
                    targets=bundle.targets).graph
    block = graph.blocks[0].name if graph.blocks else None
    return param_tensors_by_section(graph, block, _section_of(graph, block))


@pytest.mark.parametrize("name,pre,block,post", [
    ("gpt", 2, 12, 2),     # wte, wpe | 12 per block | ln_f weight and bias (head tied to wte)
    ("llama", 1, 9, 2),    # embed | 9 per block | norm, output
])
def test_sections_hold_the_modules_parameter_tensors(name: str, pre: int, block: int,
                                                     post: int) -> None:
    """Per section, the tensors of the modules there (counted from nn.Module.parameters)."""
    bundle = build(name, batch=2, small=True, device="meta")
    assert len(list(bundle.model.get_submodule("blocks.0").parameters())) == block
    assert _sections(name) == {"pre": pre, "block": block, "post": post}
    assert pre + 2 * block + post == len(list(bundle.model.parameters()))


def test_stages_split_the_tensors_as_the_pipeline_splits_the_blocks() -> None:
    """gpt (12 blocks) at pp=2: stage 0 holds the embeddings and blocks 0-5, stage 1 blocks
    6-11, the final norm and its own copy of the tied `wte` (the runtime's post modules,
    `runtime.pipeline` LAYOUTS), counted from the model's modules; at pp=1 one device holds
    all."""
    model = build("gpt", batch=2, device="meta").model

    def tensors(path: str) -> int:
        return len(list(model.get_submodule(path).parameters()))

    blocks = [tensors(f"blocks.{i}") for i in range(12)]
    first, last = tensors("wte") + tensors("wpe"), tensors("ln_f")
    sections = _sections("gpt")  # the small preset's sections: same modules, fewer blocks
    program, _ = compile_model("gpt", {}, load_system("cpu:2"),
                               parse_plan("pp=2,mb=1,precision=fp32"), batch=4)
    assert [stage_param_tensors(program, s, sections) for s in (0, 1)] == [
        first + sum(blocks[:6]), sum(blocks[6:]) + last + tensors("wte")]
    one, _ = compile_model("gpt", {}, load_system("cpu"), parse_plan("dp=1,precision=fp32"),
                           batch=4)
    assert stage_param_tensors(one, 0, sections) == len(list(model.parameters()))
