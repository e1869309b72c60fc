"""The model zoo: our own torch.nn implementations behind one registry, `MODELS`.

    from dojo.models import build
    bundle = build("gpt2-small", batch=8, seq=1024, device="meta")
    loss = bundle.loss_fn(bundle.model(*bundle.example_inputs), *bundle.targets)

`build` also accepts `path/to/file.py:factory` for a user model (see `dojo.models.factory`).
Importing this package registers every model; the order below is the listing order.
"""

from __future__ import annotations

# isort: off
from dojo.models import mlp, resnet, vit, gpt, llama, moelm, occupancy  # noqa: F401
# isort: on
from dojo.models.factory import load_factory
from dojo.models.zoo import (
    MODELS,
    ModelBundle,
    ModelEntry,
    TrainConfig,
    build,
    check_model,
    config_keys,
    count_parameters,
    make_config,
    names,
)

__all__ = [
    "MODELS",
    "ModelBundle",
    "ModelEntry",
    "TrainConfig",
    "build",
    "check_model",
    "config_keys",
    "count_parameters",
    "load_factory",
    "make_config",
    "names",
]
