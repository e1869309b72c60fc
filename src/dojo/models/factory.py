"""User models from a Python file: `path/to/file.py:factory`.

`factory()` takes no arguments and returns `(model, example_inputs, loss_fn, optimizer)`:
- model: a `torch.nn.Module`;
- example_inputs: a tuple (or list) of tensors, called as `model(*example_inputs)`;
- loss_fn: `loss_fn(model_output) -> scalar tensor` (a user bundle has no separate targets);
- optimizer: a `torch.optim.Optimizer` over the model's parameters, or a callable
  `params -> Optimizer`. An instance is re-created for new parameters with its class and its
  `defaults` (hyper-parameters), so every `make_optimizer` call gives a fresh state.
Every failure (missing file, import error, missing attribute, wrong return shape) is a one-line
`DojoError` naming the file.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dojo.errors import DojoError
from dojo.models.zoo import ModelBundle

SHAPE = "(model, example_inputs, loss_fn, optimizer)"


def load_factory(spec: str, *, device: str | torch.device = "cpu") -> ModelBundle:
    """Import `path.py:name`, call `name()`, check what it returns and wrap it as a bundle.

    The model and inputs are moved to `device` when it differs from theirs ("meta" included).
    """
    path_text, sep, attr = spec.rpartition(":")
    if not sep or not path_text.endswith(".py") or not attr:
        raise DojoError(f"model '{spec}': expected path/to/file.py:function")
    module = _import_file(Path(path_text), spec)
    factory = getattr(module, attr, None)
    if factory is None:
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise DojoError(f"{path_text}: no function '{attr}'; callables there: "
                        f"{', '.join(found) or '(none)'}")
    if not callable(factory):
        raise DojoError(f"{path_text}: '{attr}' is a {type(factory).__name__}, not a function")
    try:
        result = factory()
    except Exception as err:  # the user's code failed: say where, keep it one line
        raise DojoError(f"{spec}: factory raised {_one_line(err)}") from err
    model, inputs, loss_fn, make_opt = _check_result(spec, result)
    dev = torch.device(device)
    model = model.to(dev) if dev.type != "meta" else model.to_empty(device=dev)
    return ModelBundle(
        name=spec, config=None, model=model, example_inputs=tuple(t.to(dev) for t in inputs),
        targets=(), loss_fn=loss_fn, make_optimizer=make_opt, sequence=False,
    )


def _import_file(path: Path, spec: str) -> Any:
    if not path.is_file():
        raise DojoError(f"model '{spec}': file {path} does not exist")
    name = f"dojo_user_model_{abs(hash(str(path.resolve())))}"
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise DojoError(f"model '{spec}': cannot import {path} as Python")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # dataclasses and pickling in the user file look themselves up
    try:
        loader_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise DojoError(f"{path}: import failed: {_one_line(err)}") from err
    return module


def _check_result(
    spec: str, result: Any
) -> tuple[nn.Module, tuple[Tensor, ...], Callable[..., Tensor], Callable[..., Any]]:
    if not isinstance(result, tuple | list) or len(result) != 4:
        got = f"a {type(result).__name__}" + (
            f" of {len(result)} items" if isinstance(result, tuple | list) else "")
        raise DojoError(f"{spec}: factory must return {SHAPE}; got {got}")
    model, inputs, loss_fn, opt = result
    if not isinstance(model, nn.Module):
        raise DojoError(f"{spec}: model (item 1 of {SHAPE}) is a {type(model).__name__}, "
                        "expected a torch.nn.Module")
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    if not isinstance(inputs, tuple | list) or not all(isinstance(t, Tensor) for t in inputs):
        raise DojoError(f"{spec}: example_inputs (item 2 of {SHAPE}) must be a tuple of tensors")
    if not callable(loss_fn):
        raise DojoError(f"{spec}: loss_fn (item 3 of {SHAPE}) is not callable")
    return model, tuple(inputs), loss_fn, _optimizer_maker(spec, opt)


def _optimizer_maker(spec: str, opt: Any) -> Callable[[Iterable[nn.Parameter]], Any]:
    if isinstance(opt, torch.optim.Optimizer):
        cls, defaults = type(opt), dict(opt.defaults)

        def remake(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
            # torch records derived settings in `defaults` (AdamW's decoupled_weight_decay) that
            # its constructor does not take back: pass only what the signature accepts.
            accepted = inspect.signature(cls.__init__).parameters
            return cls(params, **{k: v for k, v in defaults.items() if k in accepted})

        return remake
    if callable(opt):
        return opt
    raise DojoError(f"{spec}: optimizer (item 4 of {SHAPE}) is a {type(opt).__name__}, expected "
                    "a torch.optim.Optimizer or a function params -> Optimizer")


def _one_line(err: Exception) -> str:
    return f"{type(err).__name__}: " + " ".join(str(err).split())
