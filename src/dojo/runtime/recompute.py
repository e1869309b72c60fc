"""Activation recompute (plan recompute=selective|full), executed with torch.utils.checkpoint.

- full: every block's forward runs under `checkpoint` (non-reentrant): backward recomputes the
  block from its input, so only block inputs are saved. Any model with a `blocks` ModuleList
  (gpt family, llama).
- selective: the attention core (QK^T, softmax, dropout, @V; Korthikanti et al., 2022) is
  recomputed, the matmuls' inputs are kept. The gpt family: its attention is a
  `tensor_parallel.ParallelAttention` (split tp ways, or with tp = 1 the same module without
  communication) whose `recompute_core` is set.
Checkpoint keeps the RNG state, so dropout masks repeat exactly in the recomputation. Under tp the
recomputed forward repeats its collectives; every tp rank recomputes in the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dojo.errors import DojoError


def _checkpointed(forward: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def run(*args: Any) -> Tensor:
        out: Tensor = checkpoint(forward, *args, use_reentrant=False)
        return out

    return run


def apply_recompute(model: nn.Module, mode: str) -> None:
    """Make `model` recompute as `mode` says ("none", "selective", "full"); DojoError for a
    model that has no blocks (full) or no `ParallelAttention` (selective)."""
    if mode == "none":
        return
    if mode not in ("selective", "full"):
        raise DojoError(f"recompute={mode}: dojo run executes recompute=none, selective and "
                        "full; op-level policies are simulated (dojo simulate) only")
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise DojoError(f"recompute={mode} needs a block-structured model (gpt, llama); "
                        f"{type(model).__name__} has no blocks")
    if mode == "full":
        for block in blocks:
            # The instance attribute shadows the class's forward: names and state_dict keys stay
            # those of the whole model (a wrapper module would prefix every parameter name).
            block.forward = _checkpointed(block.forward)
        return
    from dojo.runtime.tensor_parallel import ParallelAttention

    attentions = [m for m in model.modules() if isinstance(m, ParallelAttention)]
    if not attentions:
        raise DojoError(f"recompute=selective supports the gpt models; {type(model).__name__} "
                        "has no attention it can recompute (use recompute=full)")
    for attention in attentions:
        attention.recompute_core = True
