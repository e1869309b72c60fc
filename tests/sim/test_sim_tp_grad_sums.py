"""One backward tp collective per shared input of column-parallel linears, by closed forms.

Megatron-LM's ColumnParallelLinear applies f (`copy_to_tensor_model_parallel_region`; with sp
the all-gather `gather_from_sequence_parallel_region`) to its input, and f's backward reduces the
input gradient over tp (all-reduce; with sp a reduce-scatter). Llama's wq, wk, wv are one fused
linear_qkv and its w1, w3 one linear_fc1 (gated), so a block issues two such collectives, each of
the (s, b, h) input gradient: 2 x s x b x h x bytes per element; GPT's c_attn and c_fc likewise
(megatron/core/transformer/attention.py SelfAttention.linear_qkv, mlp.py MLP.linear_fc1). Unfused
linears reading one tensor give the same count: autograd adds their partial input gradients
locally, and the sum is reduced once. In Megatron-Core's MoE layer
(megatron/core/transformer/moe/moe_layer.py) the router is replicated, the shared experts are an
MLP with one fc1 (moe/shared_experts.py), and the routed experts' fused fc1
(moe/experts.py GroupedMLP/TEGroupedMLP) runs on the s b k dispatched tokens when expert tensor
parallelism equals tp: one collective each. Counted from the compiled program's op list.
"""

from __future__ import annotations

import pytest

from dojo.compiler.program import compile_program
from dojo.compiler.work import model_work
from dojo.hardware import load_system
from dojo.plan.plan import parse_plan
from dojo.sim.session import captured

L, B, S, H, NH, FFN, V = 2, 2, 32, 64, 4, 128, 256
T = S * B
ACT = 4.0 * T * H  # one (s, b, h) gradient, FP32 as captured


def _program(model: str, overrides: dict[str, object], sp: bool):  # type: ignore[no-untyped-def]
    graph, _ = captured(model, overrides, B, None)
    work = model_work(graph, tp=2, sp=sp)
    spec = load_system("h100-cluster", devices=2)
    plan = parse_plan(f"dp=1,tp=2,mb={B}{',sp=on' if sp else ''}", "test plan")
    (chunk,) = compile_program(work, plan, spec, batch=B).chunks
    return work, chunk


def _big(comms: list[tuple[str, float]], kind: str) -> list[float]:
    """Bytes of the collectives of `kind` at least one activation large (not row statistics)."""
    return [b for k, b in comms if k == kind and b >= ACT]


def _pairs(chunk) -> list[tuple[str, float]]:  # type: ignore[no-untyped-def]
    return [(c.kind, c.nbytes) for c in chunk.tp_backward]


LLAMA = {"layers": L, "hidden": H, "heads": NH, "kv_heads": 2, "ffn": FFN, "vocab": V,
         "seq": S}
GPT = {"layers": L, "hidden": H, "heads": NH, "vocab": V, "seq": S}


@pytest.mark.parametrize(("model", "overrides"), [("llama", LLAMA), ("gpt", GPT)])
@pytest.mark.parametrize("sp", [False, True])
def test_two_backward_collectives_per_block(model: str, overrides: dict[str, object],
                                            sp: bool) -> None:
    work, chunk = _program(model, overrides, sp)
    assert work.block is not None and work.repeat == L
    kind = "reduce_scatter" if sp else "all_reduce"
    assert _big(list(work.block.tp_backward), kind) == [ACT, ACT]
    assert sum(b for k, b in work.block.tp_backward if k == kind) == 2 * ACT
    # the program's op list: L blocks plus the head's input gradient (vocabulary-parallel)
    assert _big(_pairs(chunk), kind) == [ACT] * (2 * L + 1)
    if sp:  # each reduce-scatter pairs with the all-gather of the same tensor, and the
        # column-parallel linear's saved input shard is gathered again for its weight gradient
        assert _big(_pairs(chunk), "all_gather") == [ACT] * 2 * (2 * L + 1)
    else:
        assert not _big(_pairs(chunk), "reduce_scatter")


DS = {"layers": 3, "dense_layers": 1, "hidden": H, "heads": NH, "kv_heads": NH, "ffn": FFN,
      "expert_ffn": 32, "experts": 8, "top_k": 2, "groups": 4, "group_top_k": 2,
      "q_lora_rank": 32, "kv_lora_rank": 16, "qk_nope_dim": 16, "qk_rope_dim": 8,
      "v_dim": 16, "seq": S, "vocab": V}


def test_moe_block_reduces_shared_and_routed_inputs_once_each() -> None:
    """DeepSeek-V3 MoE layer, tp = 2 (etp = tp): attention's latents (q: rq, kv: rkv, rotary
    key: dr per token) as Megatron-Core's MLA, then one collective for the shared expert's
    input (T h) and one for the routed experts' (T k h, k = 2), not one per w1 and w3."""
    work, _ = _program("deepseek-v3", DS, sp=False)
    assert work.block is not None
    got = sorted(b for k, b in work.block.tp_backward if k == "all_reduce")
    assert got == sorted([4.0 * T * 32, 4.0 * T * 16, 4.0 * T * 8, ACT, 2 * ACT])
