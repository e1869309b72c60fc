"""ZeRO stages 1 and 2 over the data-parallel group (plan zero=1|2).

The parameters a rank owns (its pipeline stage's, its tp slices) are viewed as one flat FP32
vector of n elements, padded to dp * shard elements (shard = ceil(n / dp)). Replica r owns the
slice [r * shard, (r + 1) * shard). Each step:
1. reduce-scatter the flat gradient over the dp group (sum, then / dp): this rank receives the
   averaged gradient of its slice only (same bytes as half an all-reduce);
2. the optimizer (built by the model's factory over one parameter, the slice) updates the slice,
   so its state (momentum; Adam's m and v) exists for 1/dp of the parameters;
3. all-gather the updated slices and copy them into the model's parameters.
SGD and AdamW update element by element, so the sharded update equals the unsharded one.
zero=2 also drops the full gradients after the reduce-scatter (only the slice is kept). The
gradients still accumulate whole during backward (no bucketed reduce-scatter while backward
runs), so zero=2 lowers memory between steps, not the backward peak. zero=3 (parameters sharded,
FSDP) is simulated but not executed: `check_zero` refuses it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from dojo.errors import DojoError


def check_zero(zero: int) -> None:
    """DojoError for a ZeRO stage the runtime does not execute."""
    if zero > 2:
        raise DojoError(f"zero={zero} (parameters sharded, FSDP) is simulated but not executed by "
                        "the runtime; use zero=1 (optimizer state) or zero=2 (also gradients)")


class ZeroOptimizer:
    """Sharded optimizer step for `params` over the dp `group` (this rank is `index` of `dp`).
    `optimizer` is the model's optimizer over this rank's slice (for checkpoints)."""

    def __init__(self, params: list[nn.Parameter],
                 make_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
                 group: Any, dp: int, index: int, stage: int) -> None:
        self.params = params
        self.group = group
        self.dp = dp
        self.stage = stage
        self.numel = sum(p.numel() for p in params)
        self.shard = -(-self.numel // dp)  # ceil(n / dp) elements
        self.lo = index * self.shard
        self.slice = nn.Parameter(self._flat_params()[self.lo: self.lo + self.shard].clone())
        self.optimizer = make_optimizer([self.slice])

    def _flat_params(self) -> Tensor:
        flat = torch.cat([p.detach().reshape(-1) for p in self.params])  # (n,)
        return nn.functional.pad(flat, (0, self.shard * self.dp - self.numel))  # (dp * shard,)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        """Reduce-scatter gradients, update this rank's slice, all-gather parameters."""
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads])  # (n,)
        flat = nn.functional.pad(flat, (0, self.shard * self.dp - self.numel))  # (dp * shard,)
        mine = torch.empty(self.shard)  # (shard,)
        dist.reduce_scatter_single(mine, flat, group=self.group)
        self.slice.grad = mine.div_(self.dp)
        if self.stage == 2:
            for p in self.params:
                p.grad = None
        with torch.no_grad():
            # Re-read the slice from the model, so a checkpoint loaded into the model counts.
            self.slice.copy_(self._flat_params()[self.lo: self.lo + self.shard])
        self.optimizer.step()
        whole = torch.empty(self.shard * self.dp)  # (dp * shard,)
        dist.all_gather_single(whole, self.slice.detach().contiguous(), group=self.group)
        offset = 0
        with torch.no_grad():
            for p in self.params:
                n = p.numel()
                p.copy_(whole[offset: offset + n].view_as(p))
                offset += n

    def grad_slice(self) -> tuple[int, Tensor]:
        """(first flat index, averaged gradient of this rank's slice) after the last step."""
        grad = self.slice.grad if self.slice.grad is not None else torch.zeros(self.shard)
        return self.lo, grad.detach().clone()
