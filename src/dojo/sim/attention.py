"""Fused attention as a named kernel runs it (plan key `attn`).

With `attn=auto` (the default) a fused attention op is timed as any matrix op of unknown shape:
its counted FLOPs (full s^2, `compiler.fusion.fuse_attention`) at the calibration's GEMM
efficiency. Attention kernels do not reach the GEMM rate, and how far they fall short depends on
the kernel and the GPU generation: FlashAttention-2 does not use Hopper's asynchronous tensor
cores (wgmma) and TMA, and reaches about a third of the H100's peak where FlashAttention-3 and
cuDNN's fused attention reach about half or more (Shah et al. 2024). A named kernel
(`attn=fa2|fa3|cudnn`) runs the op at that kernel's published rate on the device kind
(`attention_kernels.toml`): forward and recompute at its forward fraction of the dense peak,
the backward at its backward fraction, on the FLOPs the kernel executes, half the counted ones
under a causal mask (the kernel skips the tiles above the diagonal). The op stays bounded
below by its bytes at the memory bandwidth.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass, field
from importlib import resources

from dojo.config import check, parse
from dojo.errors import ConfigError

DEFAULT = "auto"
FLASH = "_scaled_dot_product_flash_attention"   # the fused ops' targets contain it
CAUSAL = "[causal]"                             # suffix of a causal call's fused targets


@dataclass(frozen=True, kw_only=True)
class AttentionKernel:
    """One kernel on one device kind: fractions of the dense peak on executed FLOPs."""

    name: str
    device: str
    forward: float = field(metadata=check(gt=0, le=1))
    backward: float = field(metadata=check(gt=0, le=1))
    source: str = ""

    def fraction(self, target: str) -> float:
        """The rate of the fused op `target` as a fraction of peak (its backward's or not)."""
        return self.backward if target.split("[")[0].endswith("_backward.default") \
            else self.forward


def is_fused_attention(target: str) -> bool:
    return FLASH in target


def executed_share(target: str) -> float:
    """Of a fused attention op's counted FLOPs (full s^2), those its kernel executes: half
    under a causal mask, all otherwise."""
    return 0.5 if target.endswith(CAUSAL) else 1.0


@functools.cache
def _table() -> dict[str, dict[str, AttentionKernel]]:
    path = resources.files("dojo.sim") / "attention_kernels.toml"
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return {kernel: {dev: parse(AttentionKernel, {"name": kernel, "device": dev, **row},
                                f"sim/attention_kernels.toml [{kernel}.{dev}]")
                     for dev, row in devices.items()}
            for kernel, devices in data.items()}


def kernel_names() -> tuple[str, ...]:
    """The values `attn` takes: `auto` and every kernel in the table."""
    return (DEFAULT, *sorted(_table()))


def attention_kernel(name: str, device: str, source: str = "--plan") -> AttentionKernel | None:
    """The kernel `name` on device kind `device` (a calibration name); None for `auto`.
    ConfigError (field `attn`) for a kernel not in the table or not measured on `device`."""
    if name == DEFAULT:
        return None
    table = _table()
    if name not in table:
        raise ConfigError(source, "attn", name, f"one of {', '.join(kernel_names())}")
    if device not in table[name]:
        raise ConfigError(source, "attn", name,
                          f"a kernel with a published rate on '{device}' (has "
                          f"{', '.join(sorted(table[name])) or 'none'}), or attn=auto")
    return table[name][device]


def attention_compute_time(kernel: AttentionKernel, target: str, flops: float,
                           peak_flops: float) -> float:
    """Seconds of tensor-core work of the fused attention op `target` counted at `flops` FLOP
    (full s^2) under `kernel` on a device of `peak_flops` FLOP/s: executed FLOPs / (fraction x
    peak)."""
    return flops * executed_share(target) / (kernel.fraction(target) * peak_flops)
