"""DeepSeek-V3's memory and tp traffic as Megatron-Core runs them on GPUs, by closed forms.

- A fused SwiGLU keeps its inputs (gate and up), not SiLU's output beside the product
  (Megatron-Core's `fused_bias_swiglu.py`: `SwiGLUFunction` saves its input only): per SwiGLU
  one F-wide tensor per row fewer with fused kernels than eager (`fusion=none`); a GELU block
  keeps the same either way (GELU's backward reads its input only). A fused RMSNorm keeps x and
  1/rms, not x * 1/rms (apex's `FusedRMSNormAffineFunction` saves input, weight and invvar):
  one row of the norm's width fewer per norm (the block's two h-wide norms and MLA's latent
  norms, rq and rkv wide).
- MLA's attention runs at its own value width (TransformerEngine's fused attention takes
  k_channels = dn + dr and v_channels = dv): the fused kernel reads v and writes its output
  dv wide, and its FLOPs are 2 B nh S^2 (dn + dr + dv) forward (S^2 counted whole).
- Under FP8, a tensor a module recompute drops is dropped as FP8 keeps it: the latent norms'
  outputs, read in backward only by the up projections' weight GEMMs, at 1 byte, not 2.
- With etp=1 and tp=2 under sp, an MoE block's tp traffic is its attention's and its shared
  expert's only: the router is whole on every rank (Megatron-Core's Router weight, no tp
  split) and each rank runs whole experts on the tokens dispatched to it.
Capture in FP32 (4 bytes) at B = 2, S = 64 (T = 128 tokens).
"""

from __future__ import annotations

import pytest

from dojo.compiler.fp8 import fp8_dropped_change
from dojo.compiler.fusion import flash_target, fuse_attention
from dojo.compiler.replicated import with_whole_experts
from dojo.compiler.work import model_work, weight_derived
from dojo.models.moelm import SMALL_DEEPSEEK as DS
from dojo.sim.session import captured

B = 2
S = DS["seq"]
T = B * S
H, NH, E, K = DS["hidden"], DS["heads"], DS["experts"], DS["top_k"]
DN, DR, DV, RQ, RKV = (DS["qk_nope_dim"], DS["qk_rope_dim"], DS["v_dim"], DS["q_lora_rank"],
                       DS["kv_lora_rank"])
FE = DS["expert_ffn"]           # routed and shared expert width (one shared expert)
C = -(-T * K // E)              # rows per expert at capacity 1


def _graph(**extra: int):  # type: ignore[no-untyped-def]
    return captured("deepseek-v3", {**DS, **extra}, B, None)[0]


def test_fused_swiglu_keeps_its_inputs_not_silus_output() -> None:
    g = _graph()
    eager = model_work(g, fuse="none").block
    fused = model_work(g, fuse="kernels").block
    assert eager is not None and fused is not None
    # per MoE block: SiLU's output of the routed experts (E x C x FE) and of the shared one,
    # and each RMSNorm's x * 1/rms (attention and MLP norms, h; MLA's latent norms, rq and rkv)
    assert eager.saved_bytes - fused.saved_bytes == 4.0 * (E * C * FE + T * FE
                                                           + T * (2 * H + RQ + RKV))


def test_gelu_block_keeps_the_same_fused_or_not() -> None:
    """GELU keeps its input either way; dropout's in-place scale leaves nothing to rebuild."""
    g = captured("gpt", {"layers": 2, "hidden": 64, "heads": 4, "seq": 64, "vocab": 512,
                         "attention": "math", "dropout": 0.1}, B, None)[0]
    eager, fused = model_work(g, fuse="none").block, model_work(g, fuse="kernels").block
    assert eager is not None and fused is not None
    assert eager.saved_bytes == fused.saved_bytes


@pytest.mark.parametrize("dv", [DV, 12])
def test_mla_attention_runs_at_the_value_width(dv: int) -> None:
    g = _graph(v_dim=dv)
    fused = fuse_attention(g, weight_derived(g))
    # MLA's SDPA call is causal: the fallback's added mask marks the fused op (branch attnkern)
    (op, *_) = [o for o in fused.ops if o.target == flash_target(backward=False, causal=True)]
    q, k, v = (fused.tensors[t].shape for t in op.inputs)
    assert fused.tensors[op.outputs[0]].shape == (B, NH, S, dv)
    assert v[-1] == dv and q[-1] == DN + DR and DN + DR in k[-2:]  # k may be transposed
    assert op.flops == 2.0 * B * NH * S * S * (DN + DR + dv)


def test_fp8_drops_the_latent_norms_outputs_at_one_byte() -> None:
    g = _graph()
    scale = 0.5   # BF16 activations from the FP32 capture
    change = fp8_dropped_change(g, frozenset({"mla_up_proj"}), tp=1, sp=False, scale=scale)
    assert change == -0.5 * 4.0 * scale * (T * RQ + T * RKV)


def test_moe_block_tp_traffic_is_attention_and_shared_expert_only() -> None:
    work = model_work(with_whole_experts(_graph()), tp=2, sp=True)
    assert work.block is not None
    forward = sorted(b for kind, b in work.block.tp_forward if kind == "reduce_scatter")
    backward = sorted(b for kind, b in work.block.tp_backward if kind == "reduce_scatter")
    assert forward == [4.0 * T * H] * 2                   # wo and the shared expert's w2
    # the shared expert's input (its w1 and w3 summed first: Megatron-Core's SharedExpertMLP
    # has one fused linear_fc1), the up projections' latents and the rotary key
    assert backward == sorted([4.0 * T * H] + [4.0 * T * RQ, 4.0 * T * RKV, 4.0 * T * DR])
    gathers = [b for kind, b in work.block.tp_forward + work.block.tp_backward
               if kind == "all_gather"]
    # under sp each column-parallel linear saves its input's sequence shard and re-gathers it
    # in backward for its weight gradient (Megatron's LinearWithGradAccumulationAndAsync-
    # Communication): the shared expert's fc1 (h wide) and the q and kv up projections
    # (their latents); the rotary key is no linear's input
    regathered = [4.0 * T * H, 4.0 * T * RQ, 4.0 * T * RKV]
    assert sorted(gathers) == sorted(forward + backward + regathered)
