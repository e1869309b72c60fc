"""Multi-latent attention under tensor parallelism as Megatron-Core splits it, by closed forms.

Megatron-Core's MLASelfAttention builds its down projections (linear_q_down_proj,
linear_kv_down_proj) as TELinear with parallel_mode "duplicated": whole on every tp rank, on the
rank's sequence shard under sp; its up projections column-parallel (heads split) and linear_proj
row-parallel. So per layer, T = s b tokens, hidden h, ranks rq (queries) and rkv (latent),
rotary width dr, heads nh, widths dn (no-rope), dv (values), f the SwiGLU width, 4-byte capture:
- forward: the row-parallel outputs only (attention's wo and the MLP's w2): 2 x 4 T h bytes,
  nothing between a down and an up projection;
- backward: the column-parallel input gradients, one per shared input (the MLP's w1 and w3 read
  one tensor, summed before its one reduction as Megatron's fused linear_fc1: 4 T h; the head's;
  the up projections: 4 T rq and 4 T rkv) and the rotary key's (4 T dr), whose partial sums over
  the rank's heads come back through its broadcast;
- with sp, where the ranks issue them (dojo.runtime.tensor_parallel_moe): each of these f's an
  all-gather of its input forward (the latents and the rotary key, not the residual stream) and
  a reduce-scatter backward, each row-parallel output (and the embedding) a reduce-scatter
  forward and an all-gather of its gradient backward, and the linears' saved input shards
  gathered again for their weight gradients;
- per-rank FLOP: the down projections whole (2 T h rq, 2 T h (rkv + dr)), / tp under sp; the
  up projections / tp (2 T rq nh (dn + dr) / tp, 2 T rkv nh (dn + dv) / tp);
- weights: the down projections whole on each rank, the rest / tp.
The model is the DeepSeek-V3 preset shrunk with every layer dense (`dense_layers = layers`), so
that the MoE layers' router, a separate matter, does not enter the counts.
"""

from __future__ import annotations

import pytest

from dojo.compiler.work import model_work
from dojo.sim.session import captured

L, B, S, H, NH = 3, 2, 64, 64, 4
RQ, RKV, DN, DR, DV, FFN, V = 32, 16, 16, 8, 16, 128, 512
T = S * B
DS = {"layers": L, "dense_layers": L, "hidden": H, "heads": NH, "kv_heads": NH, "ffn": FFN,
      "expert_ffn": 32, "experts": 8, "top_k": 2, "groups": 4, "group_top_k": 2,
      "q_lora_rank": RQ, "kv_lora_rank": RKV, "qk_nope_dim": DN, "qk_rope_dim": DR,
      "v_dim": DV, "seq": S, "vocab": V}
DOWN = H * RQ + H * (RKV + DR)                       # one layer's down-projection weights
LAYER = (H + DOWN + RQ + RQ * NH * (DN + DR) + RKV + RKV * NH * (DN + DV) + NH * DV * H
         + H + 3 * H * FFN)                          # norms, MLA, SwiGLU
PARAMS = V * H + L * LAYER + H + H * V               # embedding, layers, final norm, head


def _work(tp: int, sp: bool = False):  # type: ignore[no-untyped-def]
    graph, _ = captured("deepseek-v3", DS, B, None)
    return model_work(graph, tp=tp, sp=sp)


def _count(comms: tuple[tuple[str, float], ...], kind: str) -> list[float]:
    return sorted(b for k, b in comms if k == kind)


def test_forward_reduces_only_the_row_parallel_outputs() -> None:
    work = _work(2)
    # the embedding's vocabulary-parallel lookup, then wo and w2 per layer; the loss's FP32
    # row statistics (vocab-parallel cross entropy: the row max, then the target logit and the
    # sum of exponentials in one) are the two small ones
    big = [b for b in _count(work.pre.tp_forward, "all_reduce") if b >= 4 * T * H]
    assert big == [4.0 * T * H] * (1 + 2 * L)
    assert len(work.pre.tp_forward) == 1 + 2 * L + 2


def test_backward_reduces_the_column_parallel_input_gradients() -> None:
    per_layer = [4.0 * T * H, 4.0 * T * RQ, 4.0 * T * RKV, 4.0 * T * DR]
    head = [4.0 * T * H]        # the vocabulary-parallel head's input gradient (column-parallel)
    # the loss's vocab-parallel cross entropy needs none: softmax minus one-hot is local
    expected = sorted(per_layer * L + head)
    work = _work(2)
    assert _count(work.post.tp_backward + work.pre.tp_backward, "all_reduce") == expected


def test_sp_gathers_each_f_input_and_scatters_each_g_output() -> None:
    f = [4.0 * T * H, 4.0 * T * RQ, 4.0 * T * RKV, 4.0 * T * DR] * L + [4.0 * T * H]
    g = [4.0 * T * H] * (1 + 2 * L)  # the embedding, then wo and w2 per layer
    sp = _work(2, sp=True)
    fwd = sp.post.tp_forward + sp.pre.tp_forward
    assert (_count(fwd, "all_gather"), _count(fwd, "reduce_scatter")) == (sorted(f), g)
    # backward: the converse; the column-parallel linears (fc1, the up projections, the head)
    # gather their saved input shard again for the weight gradient; the rotary key's gradient
    # comes back through its broadcast, not a linear's input: no re-gather
    regather = [4.0 * T * H, 4.0 * T * RQ, 4.0 * T * RKV] * L + [4.0 * T * H]
    bwd = sp.post.tp_backward + sp.pre.tp_backward
    assert _count(bwd, "reduce_scatter") == sorted(f)
    assert _count(bwd, "all_gather") == sorted(g + regather)


@pytest.mark.parametrize("sp", [False, True])
def test_down_projections_run_whole_and_up_projections_split(sp: bool) -> None:
    flops = [o.flops for o in _work(2, sp).pre.forward if o.kind == "matrix"]
    shard = 2 if sp else 1
    layer = [2.0 * T * H * RQ / shard, 2.0 * T * RQ * NH * (DN + DR) / 2,
             2.0 * T * H * (RKV + DR) / shard, 2.0 * T * RKV * NH * (DN + DV) / 2]
    for i in range(L):
        assert flops[9 * i:9 * i + 4] == layer


def test_down_projection_weights_are_whole_on_each_rank() -> None:
    assert _work(1).pre.params == PARAMS
    for sp in (False, True):
        per_rank = _work(2, sp).pre.params / 2
        assert per_rank == pytest.approx((PARAMS - L * DOWN) / 2 + L * DOWN)


def test_dense_models_declare_nothing_replicated() -> None:
    graph, _ = captured("llama", {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 4,
                                  "ffn": 128, "seq": 32, "vocab": 256}, 2, None)
    assert "tp_replicated" not in dict(graph.meta)
