"""Megatron-Core's selective recompute by module (`recompute=modules:mla_up_proj+mlp`;
dojo.plan.policies): which of a block's forward ops each module covers, and which of their saved
tensors the module drops.

Megatron-Core (`TransformerConfig.recompute_modules`) checkpoints submodules of every
transformer layer, the repeated blocks and any others (DeepSeek-V3's dense layers ride in the
`pre` section); from the captured graph, a module is the forward ops of a layer instance (a
module path with an index, `blocks.3`, `dense.0`) whose path (`Op.layer`, relative to the
instance) lies in:
- `core_attn`: the attention core (the fused attention kernel, or unfused attention's scores,
  softmax, dropout and context: what `selective` replays);
- `mla_up_proj`: multi-latent attention's up projections, q_norm, q_b, kv_norm, kv_b, and the
  attention's own ops from them to the core (RoPE, concatenation); none without MLA;
- `layernorm`: the block's norms (its children named `*norm*` or `ln*`: input_layernorm and
  pre_mlp_layernorm);
- `mlp`: the feed-forward child (`ffn`, `mlp`) of a dense block; Megatron skips an MoE layer;
- `moe_act`: the routed experts' own pointwise ops (activation and gating product);
- `moe`: the whole feed-forward child of an MoE block (router, dispatch, experts, shared
  experts).
`core_attn`, `mlp` and `moe` checkpoint normally: the module's saved tensors are dropped except
an output that a matmul outside it reads (that matmul keeps it saved), and the backward reruns
the module. `mla_up_proj`, `layernorm` and `moe_act` discard their outputs too
(CheckpointWithoutOutput): every saved tensor they make is dropped and rebuilt before the
backward of their consumer. The kernels rerun are the fused groups holding a module op; the tp
collectives replayed are those the module's own ops issue (`tpflow.tp_collectives`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dojo.compiler import fusion
from dojo.graph import Graph, Op
from dojo.graph.analysis import root

DISCARD = frozenset({"mla_up_proj", "layernorm", "moe_act"})
UP_PROJ = ("attn.q_norm", "attn.q_b", "attn.kv_norm", "attn.kv_b")


@dataclass(frozen=True)
class Selection:
    """The forward ops of the named modules (`ops`, op ids) and the saved tensors they drop."""

    ops: frozenset[int]
    kept: frozenset[int]  # root ids a normal checkpoint's outside matmul readers keep saved

    def drops(self, op: Op, tensor: int) -> bool:
        """Whether the saved tensor `tensor` (root id), made by `op`, is dropped."""
        return op.id in self.ops and tensor not in self.kept


def split_path(layer: str | None) -> tuple[str, str]:
    """(instance, path relative to it): `blocks.3.attn.q_b` -> (`blocks.3`, `attn.q_b`);
    ("", "") outside any indexed layer (embedding, final norm, head)."""
    parts = (layer or "").split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i + 1]), ".".join(parts[i + 1:])
    return "", ""


def relative(layer: str | None) -> str:
    """A module path relative to its layer instance: `blocks.3.attn.q_b` -> `attn.q_b`."""
    return split_path(layer)[1]


def module_of(ops: list[Op], core: Callable[[Op], bool], moe: bool) -> dict[str, set[int]]:
    """Op ids of each module among one block instance's forward `ops` (in order)."""
    out: dict[str, set[int]] = {m: set() for m in
                                ("core_attn", "mla_up_proj", "layernorm", "mlp", "moe_act", "moe")}
    up_started = core_seen = False
    for op in ops:
        rel = relative(op.layer)
        first = rel.split(".")[0]
        if first == "attn" and core(op):
            out["core_attn"].add(op.id)
            core_seen = True
        elif rel in UP_PROJ or (rel == "attn" and up_started and not core_seen):
            if rel in UP_PROJ:
                up_started = True
            out["mla_up_proj"].add(op.id)
        elif rel == first and ("norm" in first or first.startswith("ln")):
            out["layernorm"].add(op.id)
        elif first in ("ffn", "mlp"):
            out["moe" if moe else "mlp"].add(op.id)
            if moe and rel.endswith("experts") and op.rule not in fusion.MATRIX_RULES:
                out["moe_act"].add(op.id)
    return out


def selection(graph: Graph, modules: frozenset[str], core: Callable[[Op], bool]) -> Selection:
    """The ops of `modules` in every layer instance and the outputs normal checkpoints keep
    (`core`: whether an op is the attention core, `work.is_attention_core`)."""
    forward = [op for op in graph.ops if op.phase == "forward"]
    layers: dict[str, list[Op]] = {}
    for op in forward:
        name = split_path(op.layer)[0]
        if name:
            layers.setdefault(name, []).append(op)
    ops: set[int] = set()
    discard: set[int] = set()
    for mine in layers.values():
        moe = any(".experts" in f".{relative(op.layer)}" for op in mine)
        found = module_of(mine, core, moe)
        ops |= set().union(*(found[m] for m in modules))
        discard |= set().union(*(found[m] for m in modules & DISCARD))
    normal = ops - discard
    made = {root(graph, t).id for op in forward if op.id in normal for t in op.outputs}
    kept = {r for op in forward if op.id not in ops and op.rule in fusion.MATRIX_RULES
            for r in (root(graph, t).id for t in op.inputs) if r in made}
    return Selection(ops=frozenset(ops), kept=frozenset(kept))
