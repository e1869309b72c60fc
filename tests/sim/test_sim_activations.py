"""Activation memory per transformer layer against Korthikanti et al. 2022 (arXiv:2205.05198),
§4: bytes kept for backward per layer, 16-bit activations and 1-byte dropout masks, s = sequence,
b = micro-batch, h = hidden, a = heads, t = tensor-parallel size:
  no parallelism           s b h (34 + 5 a s / h)                (eq. 1)
  tensor parallel          s b h (10 + 24 / t + 5 a s / (h t))   (eq. 2)
  tensor + sequence par.   s b h / t (34 + 5 a s / h)            (eq. 3)
The captured graph also keeps the two LayerNorms' per-row mean and 1/std, which the paper leaves
out as minor: FP32 under mixed precision (apex's and Megatron-LM's LayerNorm keep them so), 2 x 2
x 4 bytes x s b per layer, replicated like the LayerNorm (split by t only with sequence
parallelism); fused attention also keeps its FP32 row logsumexp, 4 bytes x a s b (split by t).
"""

from __future__ import annotations

import pytest

from dojo.compiler.work import model_work
from dojo.sim.session import captured

S, B, H, A = 512, 2, 256, 4
SBH = S * B * H
STATS = 2 * 2 * 4 * S * B  # the LayerNorms' FP32 mean and 1/std
LSE = 4 * A * S * B        # fused attention's FP32 logsumexp


def _layer_bytes(tp: int = 1, sp: bool = False, attention: str = "math",
                 dropout: float = 0.1) -> float:
    graph, _ = captured("gpt", {"layers": 4, "hidden": H, "heads": A, "seq": S, "vocab": 1024,
                                "ffn": 4 * H, "attention": attention, "dropout": dropout}, B, None)
    work = model_work(graph, tp=tp, sp=sp, scale=0.5)  # FP32 capture -> 16-bit activations
    assert work.block is not None
    return work.block.saved_bytes


def test_eq1_no_parallelism() -> None:
    assert _layer_bytes() == pytest.approx(SBH * (34 + 5 * A * S / H) + STATS)


@pytest.mark.parametrize("tp", [2, 4])
def test_eq2_tensor_parallel(tp: int) -> None:
    expected = SBH * (10 + 24 / tp + 5 * A * S / (H * tp)) + STATS
    assert _layer_bytes(tp=tp) == pytest.approx(expected)


@pytest.mark.parametrize("tp", [2, 4])
def test_eq3_tensor_and_sequence_parallel(tp: int) -> None:
    expected = SBH / tp * (34 + 5 * A * S / H) + STATS / tp
    assert _layer_bytes(tp=tp, sp=True) == pytest.approx(expected)


def test_flash_attention_without_dropout_keeps_no_score_matrix() -> None:
    """Fused attention keeps no (s, s) tensor and no dropout masks: eq. 1 less 5 a s / h and
    the two 1-byte masks on the hidden state, plus its logsumexp."""
    got = _layer_bytes(attention="flash", dropout=0.0)
    assert got == pytest.approx(SBH * (34 - 2) + STATS + LSE)


def test_vector_ops_split_inside_the_tensor_parallel_region_only() -> None:
    """Megatron's split: the softmax over the heads' scores and the copies of q, k, v and the
    context (as large as the residual stream, but per head) run on 1/t of the heads; the
    LayerNorm on the replicated residual stream runs whole on every rank (unless sp)."""
    graph, _ = captured("gpt", {"layers": 4, "hidden": H, "heads": A, "seq": S, "vocab": 1024,
                                "ffn": 4 * H, "attention": "math", "dropout": 0.0}, B, None)

    def bytes_of(tp: int, sp: bool, name: str) -> float:
        work = model_work(graph, tp=tp, sp=sp, fuse="none")
        assert work.block is not None
        return sum(op.bytes for op in work.block.forward if name in op.target)

    for name, split in (("_softmax", True), ("clone", True), ("native_layer_norm", False)):
        assert bytes_of(1, False, name) > 0
        assert bytes_of(4, False, name) == bytes_of(1, False, name) / (4 if split else 1)
        assert bytes_of(4, True, name) == bytes_of(1, False, name) / 4


def test_dropout_traffic_counts_one_byte_masks() -> None:
    """Megatron-LM's kernels with dropout on, against the same layer without: the dropout on
    the attention probabilities reads and writes them (2 + 2 bytes) and writes its 1-byte mask,
    and each of the two bias-dropout-add kernels writes a 1-byte mask of the hidden state."""
    def forward_vector_bytes(dropout: float) -> float:
        graph, _ = captured("gpt", {"layers": 4, "hidden": H, "heads": A, "seq": S,
                                    "vocab": 1024, "ffn": 4 * H, "attention": "math",
                                    "dropout": dropout}, B, None)
        work = model_work(graph, scale=0.5, fuse="kernels")
        assert work.block is not None
        return sum(op.bytes for op in work.block.forward if op.kind == "vector")

    scores = B * A * S * S
    assert forward_vector_bytes(0.1) - forward_vector_bytes(0.0) == 5 * scores + 2 * SBH


def test_the_loss_runs_in_fp32_under_mixed_precision() -> None:
    """Autocast and Megatron-LM compute log-softmax and the loss on FP32 logits: those kernels
    move the same bytes under BF16 as under FP32, while the final LayerNorm before the head
    moves half."""
    graph, _ = captured("gpt", {"layers": 4, "hidden": H, "heads": A, "seq": S, "vocab": 1024,
                                "ffn": 4 * H, "attention": "math", "dropout": 0.0}, B, None)
    fp32, bf16 = model_work(graph, scale=1.0), model_work(graph, scale=0.5)
    kinds = [op.kind for op in fp32.post.forward]
    head = kinds.index("matrix")
    for i, (full, half) in enumerate(zip(fp32.post.forward, bf16.post.forward)):
        if full.kind == "vector":
            assert half.bytes == (full.bytes if i > head else full.bytes / 2)
    loss_grads = list(zip(fp32.post.backward, bf16.post.backward))
    first_mm = [f.kind for f, _ in loss_grads].index("matrix")
    assert first_mm > 0
    assert all(f.bytes == h.bytes for f, h in loss_grads[:first_mm])


@pytest.mark.parametrize("tp", [1, 2])
def test_the_loss_keeps_its_softmax_in_fp32(tp: int) -> None:
    """The head side keeps the final LayerNorm's output (2 s b h, the head's input), its FP32
    mean and 1/std, and the loss's log-softmax over the vocabulary V in FP32, 4 s b V bytes
    (autocast runs log_softmax in FP32; Megatron-LM's vocab-parallel cross entropy keeps its
    FP32 softmax, s b V / t per rank), not at the 16-bit activation size; plus the int64
    targets (8 s b) and the loss's scalars."""
    vocab = 1024
    graph, _ = captured("gpt", {"layers": 4, "hidden": H, "heads": A, "seq": S, "vocab": vocab,
                                "ffn": 4 * H, "attention": "math", "dropout": 0.0}, B, None)
    post = model_work(graph, tp=tp, sp=tp > 1, scale=0.5).post
    expected = (2 * SBH + STATS / 2 + 4 * S * B * vocab) / tp
    assert expected <= post.saved_bytes <= expected + 16 * S * B
