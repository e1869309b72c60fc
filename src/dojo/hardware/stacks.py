"""Software stacks of a system: the same GPUs run faster under one training stack than another.

A system file may carry, besides its cost model's overrides (`[gpu.calibration]`), a table per
software stack (`[gpu.stacks.NAME]`, e.g. `megatron-lm`, `fsdp-eager`) whose fields override
the calibration once more. `dojo calibrate` writes them from the user's runs of each stack;
`--stack NAME` and a validation case's `stack` select one.
"""

from __future__ import annotations

from dataclasses import replace

from dojo.errors import ConfigError
from dojo.hardware.spec import SystemSpec


def with_stack(spec: SystemSpec, stack: str, strict: bool = True) -> SystemSpec:
    """`spec` with the named stack's calibration fields merged over the leaf's own. An empty
    `stack` is the system as written. A stack the file does not name is an error
    when `strict`, else the system as written (a validation case's stack that no fit has
    calibrated yet runs on the base calibration)."""
    if not stack:
        return spec
    leaf = spec.leaf
    if stack not in leaf.stacks:
        if strict:
            known = ", ".join(sorted(leaf.stacks)) or "none"
            raise ConfigError("--stack", "stack", stack,
                              f"a stack that {spec.path} calibrates ({known}; "
                              f"[{spec.leaf_name}.stacks.NAME], written by dojo calibrate)")
        return spec
    merged = {**leaf.calibration, **leaf.stacks[stack]}
    return replace(spec, leaf=replace(leaf, calibration=merged))
