"""mlp's hidden layers are one stack of identical blocks: the capture traces two and folds the
rest, so its work is bounded by the model's structure, not by `--set layers` (1,024 layers took
over 60 s traced one by one)."""

from __future__ import annotations

import dojo
from dojo.capture.api import Captured
from dojo.graph import state_bytes
from dojo.models import build

INPUTS, HIDDEN, CLASSES = 8, 16, 4


def _captured(layers: int) -> Captured:
    bundle = build("mlp", device="meta", overrides={"inputs": INPUTS, "hidden": HIDDEN,
                                                    "classes": CLASSES, "layers": layers})
    opt = bundle.make_optimizer(bundle.model.parameters())
    return dojo.capture(bundle.model, bundle.example_inputs, bundle.loss_fn, opt,
                        targets=bundle.targets)


def test_mlp_depth_folds_into_one_block() -> None:
    deep, shallow = _captured(1024).graph, _captured(4).graph
    assert [(b.name, b.repeat) for b in deep.blocks] == [("1", 1023)]
    assert len(deep.ops) == len(shallow.ops)  # traced ops: the same structure, any depth
    # closed form: first layer, 1,023 hidden layers and the classifier, weights and biases
    params = INPUTS * HIDDEN + HIDDEN + 1023 * (HIDDEN * HIDDEN + HIDDEN) + HIDDEN * CLASSES \
        + CLASSES
    assert state_bytes(deep).param_count == params
