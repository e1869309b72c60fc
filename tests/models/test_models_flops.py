"""Forward FLOPs from torch's FlopCounterMode against published figures and closed forms.

Models run on the meta device: shapes only, no arithmetic, no memory. There SDPA takes its math
path (two batched matmuls), which FlopCounterMode counts as 2 * 2 * batch * seq^2 * hidden per
layer: the full square, with no discount for the causal mask. Matmul FLOPs only: biases,
norms, softmax and activations are not counted (FlopCounterMode counts mm/conv/attention).
"""

from __future__ import annotations

import pytest
from torch.utils.flop_counter import FlopCounterMode

from dojo.models import build


def _forward_flops(name: str, **kw: object) -> int:
    bundle = build(name, device="meta", **kw)  # type: ignore[arg-type]
    with FlopCounterMode(display=False) as counter:
        bundle.model(*bundle.example_inputs)
    return int(counter.get_total_flops())


def test_resnet50_forward_flops_match_published_gmac() -> None:
    # He et al. 2015, Table 1: 3.8e9 "FLOPs" (multiply-adds) for v1; torchvision's v1.5 card: 4.09
    # GMAC -> the commonly quoted 4.1 GMAC = 8.2 GFLOP per 224x224 image.
    flops = _forward_flops("resnet50", batch=1)
    assert flops == pytest.approx(2 * 4.1e9, rel=0.03)


def _gpt_closed_form(layers: int, hidden: int, ffn: int, vocab: int, batch: int, seq: int) -> int:
    tokens = batch * seq
    weights = layers * (4 * hidden * hidden + 2 * hidden * ffn)  # matmul weights in the blocks
    attention = 2 * 2 * layers * seq * seq * hidden * batch  # QK^T and AV, full square
    head = 2 * vocab * hidden * tokens  # tied LM head
    return 2 * weights * tokens + attention + head


@pytest.mark.parametrize(("name", "shape", "batch", "seq"), [
    ("gpt2-small", (12, 768, 3072, 50257), 1, 1024),
    ("gpt2-medium", (24, 1024, 4096, 50257), 2, 512),
    ("gpt3-175b", (96, 12288, 4 * 12288, 50257), 1, 2048),
])
def test_gpt_forward_flops_closed_form(name: str, shape: tuple[int, ...], batch: int,
                                       seq: int) -> None:
    layers, hidden, ffn, vocab = shape
    flops = _forward_flops(name, batch=batch, seq=seq)
    assert flops == pytest.approx(_gpt_closed_form(layers, hidden, ffn, vocab, batch, seq),
                                  rel=1e-9)


def test_gpt2_small_flops_near_kaplan_rule() -> None:
    # Kaplan et al. 2020: forward ~ 2 N tokens + 2 * layers * seq * hidden per token (causal
    # context-averaged), N = non-embedding parameters (85M for GPT-2 small, biases and norms
    # included). Our count is the full attention square and includes the LM head; removing
    # those, the two agree to the size of the biases (< 0.2%).
    n_nonembedding = 85_054_464 + 1536  # blocks + final LayerNorm (independently: 12 * 7,087,872)
    seq, layers, hidden, vocab = 1024, 12, 768, 50257
    flops = _forward_flops("gpt2-small", batch=1, seq=seq)
    no_head_square = flops - 2 * vocab * hidden * seq - 4 * layers * seq * seq * hidden
    assert no_head_square == pytest.approx(2 * n_nonembedding * seq, rel=2e-3)


def test_llama_forward_flops_closed_form() -> None:
    layers, h, heads, kv, ffn, vocab, seq = 2, 256, 8, 2, 512, 1000, 64
    over = {"layers": layers, "hidden": h, "heads": heads, "kv_heads": kv, "ffn": ffn,
            "seq": seq, "vocab": vocab}
    flops = _forward_flops("llama", batch=3, seq=seq, overrides=over)
    tokens = 3 * seq
    kv_dim = kv * h // heads
    weights = layers * (2 * h * h + 2 * h * kv_dim + 3 * h * ffn)
    attention = 2 * 2 * layers * seq * seq * h * 3  # query heads x head size = hidden
    assert flops == 2 * weights * tokens + attention + 2 * vocab * h * tokens
