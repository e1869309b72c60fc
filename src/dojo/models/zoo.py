"""The model registry: typed configs, presets, and the `ModelBundle` every consumer gets.

Contract of a bundle (the one loss convention of dojo)::

    outputs = bundle.model(*bundle.example_inputs)
    loss = bundle.loss_fn(outputs, *bundle.targets)      # a scalar tensor
    optimizer = bundle.make_optimizer(bundle.model.parameters())

Zoo models carry one target tensor; models loaded from a user file carry none, so their loss
function takes the model output alone. Model arguments arrive as a plain dict (the CLI's repeated
`--set key=value`) and are validated by `dojo.config.parse` against the entry's config dataclass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dojo.config import check, parse
from dojo.errors import ConfigError, DojoError
from dojo.registry import Registry

SOURCE = "--set"  # where model overrides come from, for error messages
DEFAULT_BATCH = 2
# Every layer is built as a module (a Python object) before capture folds the stack into one
# template, so the layer count is the one size that costs time and memory before anything is
# traced: 1,024 is 8x the deepest published model here (Llama 3 405B, 126); a GPT of that
# depth builds on "meta" in about 15 s on a loaded 2-core machine (14 ms per layer).
MAX_LAYERS = 1024
MAX_BATCH = 2**53  # samples: counts stay exact in float64 arithmetic (the simulator's limit too)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimizer settings shared by every model config (AdamW or SGD with momentum 0.9)."""

    optimizer: str = field(default="adamw", metadata=check(choices=("adamw", "sgd")))
    lr: float = field(default=3e-4, metadata=check(gt=0))
    weight_decay: float = field(default=0.1, metadata=check(ge=0))


@dataclass(frozen=True)
class ModelBundle:
    """A model ready for one training step: module, example batch, loss and optimizer factory.

    `example_inputs` and `targets` live on the model's device ("meta" tensors carry shapes
    only). `loss_fn(outputs, *targets)` returns a scalar tensor; `make_optimizer(params)` returns
    a fresh optimizer over `params`.
    """

    name: str
    config: Any
    model: nn.Module
    example_inputs: tuple[Tensor, ...]
    targets: tuple[Tensor, ...]
    loss_fn: Callable[..., Tensor]
    make_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
    sequence: bool = False

    def loss(self) -> Tensor:
        """Forward pass on the example batch and the scalar loss."""
        return self.loss_fn(self.model(*self.example_inputs), *self.targets)

    def train_step(self, optimizer: torch.optim.Optimizer) -> Tensor:
        """One step: zero grads, forward, loss, backward, optimizer step; returns the loss."""
        optimizer.zero_grad(set_to_none=True)
        loss = self.loss()
        loss.backward()
        optimizer.step()
        return loss.detach()


ModelFn = Callable[[Any], nn.Module]
DataFn = Callable[
    [Any, int, int | None, torch.Generator, torch.device], tuple[tuple[Tensor, ...], Tensor]
]


@dataclass(frozen=True)
class ModelEntry:
    """What the zoo knows about one model name.

    `make_model(cfg)` builds the module (called under a `torch.device` context, so it lands on the
    requested device); `make_data(cfg, batch, seq, gen, device)` returns (inputs, target), drawing
    randomness from `gen` and returning shape-only tensors on "meta" (see `uniform`, `randint`).
    `preset` holds this name's values over the config defaults; `small` a further override.
    """

    config_cls: type
    make_model: ModelFn
    make_data: DataFn
    loss_fn: Callable[..., Tensor]
    preset: Mapping[str, Any] = field(default_factory=dict)
    small: Mapping[str, Any] = field(default_factory=dict)
    sequence: bool = False
    summary: str = ""
    validate: Callable[[Any, str], None] | None = None


MODELS: Registry[ModelEntry] = Registry("model")


def names() -> list[str]:
    """Registered model names, in registration order."""
    return MODELS.names()


def config_keys(name: str) -> list[str]:
    """The keys `--set` accepts for model `name`, sorted."""
    entry = MODELS.get(name)
    return sorted(f.name for f in dataclasses.fields(entry.config_cls))


def make_config(
    name: str, overrides: Mapping[str, Any] | None = None, *, small: bool = False
) -> Any:
    """Parse the config of `name`: defaults, then preset, then `small` (if asked), then overrides.

    Raises `ConfigError` (source "--set") on an unknown key or a bad value.
    """
    entry = MODELS.get(name)
    values: dict[str, Any] = dict(entry.preset)
    if small:
        values.update(entry.small)
    values.update(overrides or {})
    cfg: Any = parse(entry.config_cls, values, SOURCE)
    _check_depth(cfg)
    if entry.validate is not None:
        entry.validate(cfg, SOURCE)
    return cfg


def _check_depth(cfg: Any) -> None:
    """ConfigError when the config asks for more than `MAX_LAYERS` layers (or blocks)."""
    depth = getattr(cfg, "layers", None)
    field_name = "layers"
    if depth is None and isinstance(getattr(cfg, "blocks", None), tuple):
        depth, field_name = sum(cfg.blocks), "blocks"
    if isinstance(depth, int) and depth > MAX_LAYERS:
        raise ConfigError(SOURCE, field_name, depth, f"at most {MAX_LAYERS:,} layers (each is "
                          "built as a module before capture folds the stack)")


def build(
    name: str,
    *,
    batch: int | None = None,
    seq: int | None = None,
    device: str | torch.device = "cpu",
    overrides: Mapping[str, Any] | None = None,
    small: bool = False,
    seed: int = 0,
    module: nn.Module | None = None,
) -> ModelBundle:
    """Build model `name` (or `path/to/file.py:factory`) with its example batch on `device`.

    `batch` defaults to 2; `seq` (tokens) applies to sequence models only and defaults to the
    config's context length. On device "meta" no memory is allocated: inputs are shape-only.
    Initialisation and inputs are seeded by `seed` without touching torch's global RNG state.
    `module`: a model this call built before with the same name, overrides, `small` and device
    (any batch and seq: the module depends on neither), reused for the new example batch; on
    "meta" it spares the build (the plan search captures one model at four micro-batches).
    """
    if _is_factory_spec(name):
        from dojo.models.factory import load_factory

        if overrides:
            raise DojoError(f"model '{name}' is a user factory: it takes no --set overrides")
        return load_factory(name, device=device)
    entry = MODELS.get(name)
    cfg = make_config(name, overrides, small=small)
    batch = DEFAULT_BATCH if batch is None else batch
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise ConfigError("--batch", "batch", batch, "an integer from 1 to 2^53")
    seq = _check_seq(name, entry, cfg, seq)
    dev = torch.device(device)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with dev:
                model = entry.make_model(cfg) if module is None else module
        inputs, target = _example_data(entry, cfg, batch, seq, dev, seed)
    except (RuntimeError, TypeError) as err:
        if "overflow" not in str(err).lower():
            raise
        # a shape whose byte size passes 2**63: torch cannot even describe the tensor
        shown = " ".join(str(err).splitlines()[0].split())[:120]
        raise DojoError(f"model '{name}' with --batch {batch} and {dict(overrides or {})}: a "
                        f"tensor would pass 2**63 bytes ({shown})") from None
    return ModelBundle(
        name=name,
        config=cfg,
        model=model,
        example_inputs=inputs,
        targets=(target,),
        loss_fn=entry.loss_fn,
        make_optimizer=optimizer_factory(cfg),
        sequence=entry.sequence,
    )


def check_model(name: str, overrides: Mapping[str, Any] | None = None,
                seq: int | None = None) -> None:
    """What `build` would refuse about `name`, `overrides` and `seq` (unknown name, bad or
    unknown keys, too many layers, overrides on a user factory, a bad sequence length, a width
    whose tensors pass 2**63 bytes): for commands that print progress before their first build.
    Only overridden models are built, on "meta" (no memory; ~2 s for the largest): the zoo's
    own sizes are known to build."""
    if _is_factory_spec(name):
        if overrides:
            raise DojoError(f"model '{name}' is a user factory: it takes no --set overrides")
        return
    _check_seq(name, MODELS.get(name), make_config(name, overrides), seq)
    if overrides:
        build(name, batch=1, seq=seq, device="meta", overrides=overrides)


def _is_factory_spec(name: str) -> bool:
    path, sep, attr = name.rpartition(":")
    return bool(sep) and path.endswith(".py") and bool(attr)


def _check_seq(name: str, entry: ModelEntry, cfg: Any, seq: int | None) -> int | None:
    if not entry.sequence:
        if seq is not None:
            raise ConfigError(
                "--seq", "seq", seq, f"no value: model '{name}' is not a sequence model"
            )
        return None
    limit = int(cfg.seq)
    if seq is None:
        return limit
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= limit:
        raise ConfigError("--seq", "seq", seq, f"an integer in [1, {limit}] (the model's context)")
    return seq


def _example_data(
    entry: ModelEntry, cfg: Any, batch: int, seq: int | None, dev: torch.device, seed: int
) -> tuple[tuple[Tensor, ...], Tensor]:
    gen = torch.Generator().manual_seed(seed)
    inputs, target = entry.make_data(cfg, batch, seq, gen, dev)
    return tuple(t.to(dev) for t in inputs), target.to(dev)


def uniform(shape: tuple[int, ...], gen: torch.Generator, dev: torch.device) -> Tensor:
    """Float32 noise in [0, 1); on "meta" an uninitialised shape-only tensor (no memory)."""
    if dev.type == "meta":
        return torch.empty(shape, device=dev)
    return torch.rand(shape, generator=gen).to(dev)


def randint(high: int, shape: tuple[int, ...], gen: torch.Generator, dev: torch.device) -> Tensor:
    """Int64 values in [0, high); on "meta" a shape-only tensor."""
    if dev.type == "meta":
        return torch.empty(shape, dtype=torch.long, device=dev)
    return torch.randint(high, shape, generator=gen).to(dev)


def optimizer_factory(cfg: Any) -> Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]:
    """`params -> optimizer` from the `TrainConfig` fields of `cfg`."""

    def make(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    return make


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars; a tensor shared by two modules (tied weights) counts once."""
    return sum(p.numel() for p in model.parameters())


def classification_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Mean cross entropy; `logits` (..., classes) and integer `target` (...) flattened together."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
