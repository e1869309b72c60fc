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

`recompute=modules:MODULES` is Megatron-Core's selective recompute by module
(`--recompute-granularity selective --recompute-modules ...`, `dojo.compiler.modules`):
`core_attn` (the attention core), `mla_up_proj` (MLA's query and key-value up projections with
their norms and RoPE), `layernorm` (the block's two norms), `mlp` (a dense block's MLP; none in
an MoE block), `moe_act` (the routed experts' activation), `moe` (the whole MoE layer).
"""

from __future__ import annotations

from dojo.errors import ConfigError

OP_CLASSES = ("mm", "bmm", "attention", "conv")
NAMED = {"matmuls": OP_CLASSES}
PREFIX = "ops:"
MODULES = ("core_attn", "mla_up_proj", "layernorm", "mlp", "moe_act", "moe")
MODULE_PREFIX = "modules:"


def policy_classes(recompute: str) -> frozenset[str] | None:
    """The op classes an op-level policy saves; None for none, selective and full."""
    if recompute in NAMED:
        return frozenset(NAMED[recompute])
    if not recompute.startswith(PREFIX):
        return None
    return frozenset(recompute[len(PREFIX):].split("+"))


def policy_modules(recompute: str) -> frozenset[str] | None:
    """The Megatron modules a module policy recomputes; None for any other setting."""
    if not recompute.startswith(MODULE_PREFIX):
        return None
    return frozenset(recompute[len(MODULE_PREFIX):].split("+"))


def rebuilds_selective(recompute: str) -> bool:
    """Whether the setting is an op-level or module policy: its recompute kernels and dropped
    bytes ride in the block's selective slots, one block rerun at a time."""
    return policy_classes(recompute) is not None or policy_modules(recompute) is not None


def check_recompute(value: str, source: str, fixed: tuple[str, ...]) -> None:
    """Refuse a recompute setting that is neither one of `fixed` nor a valid op-level or module
    policy."""
    if value in fixed or value in NAMED:
        return
    if value.startswith(MODULE_PREFIX):
        names = value[len(MODULE_PREFIX):].split("+")
        bad = [m for m in names if m not in MODULES]
        if bad or len(set(names)) != len(names):
            raise ConfigError(source, "recompute", value,
                              f"modules:MODULE+MODULE... with modules from {', '.join(MODULES)} "
                              f"(each once, e.g. modules:mla_up_proj+mlp); "
                              f"'{'+'.join(bad) or value}' is not")
        return
    expected = (f"one of {', '.join(fixed)}, {', '.join(NAMED)}, or ops:CLASS+CLASS... "
                f"with classes from {', '.join(OP_CLASSES)} (e.g. ops:mm+attention), "
                f"or modules:MODULE+MODULE... with modules from {', '.join(MODULES)}")
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
