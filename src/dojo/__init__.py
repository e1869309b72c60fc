"""dojo: Tesla's Dojo training supercomputer in software.

Kept import-light on purpose: `import dojo` must not import torch, so `dojo --help` and
`dojo info` start fast. Heavy entry points are loaded on first use through `__getattr__`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# name -> "module:attribute"; resolved lazily so the torch-free paths stay fast.
_LAZY = {
    "capture": "dojo.capture:capture",
    "load_system": "dojo.hardware:load_system",
}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'dojo' has no attribute '{name}'")
    import importlib

    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)
