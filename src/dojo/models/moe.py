"""A mixture-of-experts feed-forward layer with static shapes: router, capacity dispatch, experts.

Routing, per token: the router scores every expert (`softmax`, Mixtral: softmax over the
expert logits, top-k, weights renormalised to sum to 1; `sigmoid`, DeepSeek-V3: sigmoid
scores, optionally limited to the `group_top_k` best of `groups` expert groups, top-k chosen on
score + a balancing bias buffer, weights the chosen scores normalised and times `route_scale`).

Dispatch is capacity based, as GShard and Switch run it, so every tensor has a static shape
and a captured step counts the routed work, not every expert on every token: each expert
takes at most C = ceil(capacity x tokens x top_k / experts) assignments, in token order
(assignment i of token t before those of token t+1); the rest are dropped (they contribute 0,
the residual stream carries the token on). Assignments are scattered into one buffer
[experts, C, hidden], each expert runs its SwiGLU FFN as three batched matmuls over its C
rows, and the outputs are gathered back and summed with the routing weights. With
capacity >= experts / top_k no assignment can be dropped and the layer equals the dense
reference sum_k w_k FFN_{e_k}(x) (tested).

Naming contract the compiler relies on (dojo.compiler.experts): the routed experts' weights
are parameters named `*.experts.w1|w2|w3`, stacked with the expert index first. Shared
experts (DeepSeek) are an ordinary SwiGLU on every token, replicated like any dense layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The dense and shared-expert FFN: Llama's SwiGLU, w2(silu(w1 x) * w3 x), no biases.
from dojo.models.llama import FeedForward as SwiGLU

ROUTERS = ("softmax", "sigmoid")


def capacity_of(tokens: int, experts: int, top_k: int, capacity: float) -> int:
    """Rows per expert: ceil(capacity x tokens x top_k / experts), at least 1."""
    return max(1, math.ceil(capacity * tokens * top_k / experts))


class Experts(nn.Module):
    """`experts` SwiGLU FFNs, weights stacked expert-first: w2(silu(w1 x) * w3 x) per expert."""

    def __init__(self, experts: int, hidden: int, ffn: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(experts, hidden, ffn))
        self.w3 = nn.Parameter(torch.empty(experts, hidden, ffn))
        self.w2 = nn.Parameter(torch.empty(experts, ffn, hidden))
        for w in (self.w1, self.w3, self.w2):
            nn.init.normal_(w, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        """x (E, C, H) -> (E, C, H): expert e's FFN on its C rows."""
        gate = torch.bmm(x, self.w1)  # (E, C, F)
        up = torch.bmm(x, self.w3)  # (E, C, F)
        return torch.bmm(F.silu(gate) * up, self.w2)  # (E, C, H)


class MoE(nn.Module):
    """Routed experts (top-k of `experts`, capacity dispatch) plus `shared` always-on experts.

    Under tensor parallelism the router stays whole on every rank, as Megatron-Core's Router
    holds its weight ([experts, hidden], no tp split; `megatron/core/transformer/moe/router.py`)
    and runs it on the rank's own tokens, the sequence shard under sp (dojo.compiler.replicated).
    """

    tp_replicated = ("gate",)

    def __init__(self, hidden: int, ffn: int, experts: int, top_k: int, *, shared: int = 0,
                 capacity: float = 1.0, router: str = "softmax", groups: int = 1,
                 group_top_k: int = 1, route_scale: float = 1.0) -> None:
        super().__init__()
        self.n, self.top_k, self.capacity = experts, top_k, capacity
        self.router, self.groups, self.group_top_k = router, groups, group_top_k
        self.route_scale = route_scale
        self.gate = nn.Linear(hidden, experts, bias=False)
        self.experts = Experts(experts, hidden, ffn)
        self.shared = SwiGLU(hidden, shared * ffn) if shared else None
        if router == "sigmoid":
            # DeepSeek-V3's auxiliary-loss-free balancing bias: it moves the choice, not the
            # weights, and is updated by a rule outside the gradient (kept at 0 here).
            self.register_buffer("bias", torch.zeros(experts), persistent=False)

    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (T, H) -> (weights (T, k) in x's dtype, expert ids (T, k) int64)."""
        logits = self.gate(x).float()  # (T, E)
        if self.router == "softmax":
            weights, ids = logits.softmax(-1).topk(self.top_k, dim=-1)  # (T, k)
            weights = weights / weights.sum(-1, keepdim=True)
            return weights.type_as(x), ids
        scores = logits.sigmoid()  # (T, E)
        choice = scores + self.bias  # (T, E)
        if self.groups > 1:
            t = choice.shape[0]
            grouped = choice.view(t, self.groups, -1)  # (T, G, E/G)
            best = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(-1)  # (T, G)
            keep = best.topk(self.group_top_k, dim=-1).indices  # (T, g)
            mask = torch.zeros_like(best).scatter(1, keep, 1.0)  # (T, G)
            allowed = mask.unsqueeze(-1).expand_as(grouped).reshape(t, -1)  # (T, E)
            choice = choice.masked_fill(allowed == 0, float("-inf"))
        ids = choice.topk(self.top_k, dim=-1).indices  # (T, k)
        weights = scores.gather(1, ids)  # (T, k)
        weights = weights / weights.sum(-1, keepdim=True) * self.route_scale
        return weights.type_as(x), ids

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (T, H)
        tokens, hidden = x.shape
        k, e = self.top_k, self.n
        c = capacity_of(tokens, e, k, self.capacity)
        weights, ids = self.route(x)  # (T, k), (T, k)
        flat = ids.reshape(-1)  # (T*k,) token-major
        onehot = F.one_hot(flat, e)  # (T*k, E)
        pos = (onehot.cumsum(0) * onehot).sum(-1) - 1  # (T*k,) place in its expert's queue
        slot = torch.where(pos < c, flat * c + pos, e * c)  # (T*k,) dropped -> spare row E*C
        src = x.unsqueeze(1).expand(tokens, k, hidden).reshape(tokens * k, hidden)  # (T*k, H)
        buf = x.new_zeros(e * c + 1, hidden).index_add(0, slot, src)  # (E*C+1, H)
        out = self.experts(buf[: e * c].view(e, c, hidden))  # (E, C, H)
        rows = torch.cat([out.reshape(e * c, hidden), out.new_zeros(1, hidden)])  # (E*C+1, H)
        picked = rows.index_select(0, slot) * weights.reshape(-1, 1)  # (T*k, H)
        y = picked.view(tokens, k, hidden).sum(1)  # (T, H)
        if self.shared is not None:
            y = y + self.shared(x)
        return y.view(shape)


def active_parameters(model: nn.Module) -> int | None:
    """Parameters one token passes through: all but the routed experts it is not sent to
    (each MoE layer counts top_k of its experts); None for a model without MoE layers."""
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    if not layers:
        return None
    idle = sum(sum(p.numel() for p in m.experts.parameters()) * (m.n - m.top_k) // m.n
               for m in layers)
    return sum(p.numel() for p in model.parameters()) - idle
