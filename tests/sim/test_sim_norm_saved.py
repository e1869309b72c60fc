"""What a Llama block keeps for backward when its RMSNorm runs as one fused kernel.

RMSNorm is y = w * (x * r), r = 1 / sqrt(mean(x^2) + eps) per row. A fused RMSNorm keeps its
input x and the per-row r and rebuilds x * r in its backward: apex's
`FusedRMSNormAffineFunction.forward` ends with `ctx.save_for_backward(input_, weight_, invvar)`
(apex/normalization/fused_layer_norm.py), as Megatron-LM's and TransformerEngine's RMSNorm keep
input and rsigma. Eager PyTorch runs the same formula as separate ops, and the product's
backward (the gradient of w) reads x * r, so it is kept: one h-wide tensor per token more.

Closed form, s b tokens, hidden h, ffn f, a heads of which kv share keys and values (width
h kv / a), 16-bit activations (2 bytes), t-way tensor parallelism with sequence parallelism
(every tensor below split t ways; Korthikanti et al. 2022, arXiv:2205.05198, eq. 3):
- the block's output (the next norm's input) and the residual after attention: 2 s b h each;
- each norm's output, the next GEMMs' input (Korthikanti's "LayerNorm output"): 2 s b h each;
- rotated q (2 s b h), rotated k and v (2 s b h kv / a each), the attention kernel's output
  (2 s b h; the output projection reads it as a (b, s, h) view: q is rotated token-major,
  (b, s, a, d), and transposed after, as in Meta's reference model.py, so FlashAttention,
  whose output is `empty_like` the transposed query, writes it token-major) and its FP32 row
  logsumexp (4 a s b);
- SwiGLU: w1's and w3's outputs and their product (2 s b f each; a fused SwiGLU rebuilds SiLU
  from w1's output, compiler.kernelsave);
- each norm's r (s b values).
Fused: 6 x 2 s b h + 2 x 2 s b h kv / a + 3 x 2 s b f + 4 a s b + the two r. Eager adds the
two norms' x * r (2 x 2 s b h) and SiLU's output (2 s b f).
"""

from __future__ import annotations

import pytest

from dojo.compiler.work import model_work
from dojo.sim.session import captured

S, B, H, A, KV, F = 256, 2, 128, 4, 2, 384
SB, SBH, SBF, SBK = S * B, S * B * H, S * B * F, S * B * H * KV // A
LSE = 4 * A * S * B
SHAPE = {"layers": 2, "hidden": H, "heads": A, "kv_heads": KV, "ffn": F, "seq": S, "vocab": 512}
# the two norms' r: s b values each, FP32 (4 bytes) in apex; the capture's own dtype may be
# 16-bit, so the closed forms below hold to within these bytes
STATS = 2 * 4 * SB


def _block(fuse: str, tp: int = 1) -> float:
    graph, _ = captured("llama", SHAPE, B, None)
    work = model_work(graph, tp=tp, sp=tp > 1, scale=0.5, fuse=fuse)  # FP32 capture -> BF16
    assert work.block is not None
    return work.block.saved_bytes


def _fused(tp: int) -> float:
    return (2 * (6 * SBH + 2 * SBK + 3 * SBF) + LSE) / tp


@pytest.mark.parametrize("tp", [1, 2])
def test_a_fused_rmsnorm_keeps_its_input_and_row_statistic_only(tp: int) -> None:
    assert _block("full", tp) == pytest.approx(_fused(tp), abs=STATS / tp)


def test_eager_keeps_each_norms_normalised_input_and_silus_output() -> None:
    eager = _fused(1) + 2 * 2 * SBH + 2 * SBF
    assert _block("none") == pytest.approx(eager, abs=STATS)
