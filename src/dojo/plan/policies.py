"""Op-level recompute policies: which matmul outputs a checkpointed block keeps.

`recompute=ops:CLASSES` checkpoints every repeated block as `full` does, but keeps the outputs of
the ops of the named classes (joined by `+`) for the backward, as PyTorch's selective activation
checkpointing does with a policy that marks those ops MUST_SAVE: the backward reruns the block's
forward except those ops, whose outputs it takes from the cache. Classes:

- `mm`: weight matmuls (`aten.mm`, `aten.addmm`: every Linear);
- `bmm`: batched matmuls of two activations (unfused attention's scores and context);
- `attention`: fused attention kernels (`scaled_dot_product_attention`, FlashAttention);
- `conv`: convolutions.

Named policies: `matmuls` = `ops:mm+bmm+attention+conv` (save every matmul output, recompute the
pointwise ops: PyTorch's "save compute-intensive ops" policy, torchtitan's op-level SAC);
`ops:mm` saves the linears and recomputes attention.
"""

from __future__ import annotations

from dojo.errors import ConfigError

OP_CLASSES = ("mm", "bmm", "attention", "conv")
NAMED = {"matmuls": OP_CLASSES}
PREFIX = "ops:"


def policy_classes(recompute: str) -> frozenset[str] | None:
    """The op classes an op-level policy saves; None for none, selective and full."""
    if recompute in NAMED:
        return frozenset(NAMED[recompute])
    if not recompute.startswith(PREFIX):
        return None
    return frozenset(recompute[len(PREFIX):].split("+"))


def check_recompute(value: str, source: str, fixed: tuple[str, ...]) -> None:
    """Refuse a recompute setting that is neither one of `fixed` nor a valid op-level policy."""
    if value in fixed or value in NAMED:
        return
    expected = (f"one of {', '.join(fixed)}, {', '.join(NAMED)}, or ops:CLASS+CLASS... "
                f"with classes from {', '.join(OP_CLASSES)} (e.g. ops:mm+attention)")
    if not value.startswith(PREFIX):
        raise ConfigError(source, "recompute", value, expected)
    classes = value[len(PREFIX):].split("+")
    bad = [c for c in classes if c not in OP_CLASSES]
    if bad or len(set(classes)) != len(classes):
        raise ConfigError(source, "recompute", value,
                          f"{expected}; '{'+'.join(bad) or value}' is not")


def op_class(target: str) -> str | None:
    """The class of a captured op target (`aten.addmm.default` -> mm), None for other ops."""
    if "convolution" in target:
        return "conv"
    if "attention" in target:
        return "attention"
    if "bmm" in target:
        return "bmm"
    if target.startswith(("aten.mm.", "aten.addmm.")):
        return "mm"
    return None
