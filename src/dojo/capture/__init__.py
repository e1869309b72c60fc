"""dojo.capture: a PyTorch training step -> one `dojo.graph.Graph` (forward, backward, optimizer).

    captured = dojo.capture(model, example_inputs, loss_fn, optimizer, targets=(y,))
    captured.graph            # the IR
    captured.run(model, optimizer, inputs, targets)  # execute the traced step on real tensors

The step is traced by `make_fx` under fake tensors (no memory, no compute), so models far too
big to run, built on the "meta" device, are captured too. Repeated identical blocks (a
ModuleList or Sequential of >= 3 structurally identical modules) are traced at depth 2 and kept
once in the graph with their repeat count, so capture time does not grow with depth.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

from dojo.capture.api import Captured, StepResult, capture

__all__ = ["Captured", "StepResult", "capture"]


class _CallableModule(types.ModuleType):
    """Lets `dojo.capture(...)` call the function even after `dojo.capture` became this module."""

    def __call__(self, model: Any, example_inputs: Sequence[Any], loss_fn: Callable[..., Any],
                 optimizer: Any, **kwargs: Any) -> Captured:
        return capture(model, example_inputs, loss_fn, optimizer, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
