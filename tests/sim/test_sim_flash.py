"""Flash attention with dropout, as a GPU runs it, whatever the CPU capture recorded.

`F.scaled_dot_product_attention` with dropout has no fused CPU kernel, so the capture records
PyTorch's math fallback (every (s, s) score, mask and probability kept for backward). A GPU runs
the call as one FlashAttention kernel (Dao et al. 2022, §3.1 and Algorithm 4: dropout applied in
the kernel from the Philox RNG state, the mask regenerated in backward): it keeps q, k, v, the
output, the FP32 row logsumexp (4 bytes x a s b) and the RNG seed and offset (two int64), and its
backward recomputes the scores. Korthikanti et al. 2022 (arXiv:2205.05198) §4 count 5 a s^2 b
bytes for the attention core (softmax output 2, dropout mask 1, dropout output 2); with flash
those become the logsumexp and the RNG state, every other term of eqs. 1-3 stays.
"""

from __future__ import annotations

import pytest

from dojo.compiler.program import compile_program
from dojo.compiler.work import model_work
from dojo.graph import Graph
from dojo.hardware.loader import load_system
from dojo.plan.plan import parse_plan
from dojo.sim.memory import device_memory
from dojo.sim.session import captured, compile_model
from dojo.sim.simulate import simulate

S, B, H, A = 512, 2, 256, 4
SBH = S * B * H
STATS = 2 * 2 * 4 * S * B  # the two LayerNorms' FP32 mean and 1/std
LSE = 4 * A * S * B        # the FP32 row logsumexp
RNG = 2 * 8                # Philox seed and offset, int64 each


def _graph(attention: str = "flash", dropout: float = 0.1, hidden: int = H, heads: int = A,
           seq: int = S, batch: int = B) -> Graph:
    graph, _ = captured("gpt", {"layers": 4, "hidden": hidden, "heads": heads, "seq": seq,
                                "vocab": 1024, "ffn": 4 * hidden, "attention": attention,
                                "dropout": dropout}, batch, None)
    return graph


def _layer_bytes(tp: int = 1, sp: bool = False, fused: bool = True, batch: int = B) -> float:
    work = model_work(_graph(batch=batch), tp=tp, sp=sp, scale=0.5,
                      fused_attention=fused)
    assert work.block is not None
    return work.block.saved_bytes


@pytest.mark.parametrize("batch", [1, B])
def test_eq1_with_flash_attention_and_dropout(batch: int) -> None:
    """Eq. 1 with the attention core's 5 a s / h replaced by flash's logsumexp and RNG state
    (the captured fallback's graph differs at micro-batch 1: no copies before the matmuls)."""
    sbh, stats, lse = S * batch * H, STATS // B * batch, LSE // B * batch
    got = _layer_bytes(batch=batch)
    assert got == pytest.approx(sbh * 34 + stats + lse + RNG, abs=RNG)


@pytest.mark.parametrize("tp", [2, 4])
def test_eq2_with_flash_attention_and_dropout(tp: int) -> None:
    """Eq. 2: the core's 5 a s / (h t) becomes the logsumexp of this rank's heads."""
    expected = SBH * (10 + 24 / tp) + STATS + LSE / tp + RNG
    assert _layer_bytes(tp=tp) == pytest.approx(expected, abs=RNG)


@pytest.mark.parametrize("tp", [2, 4])
def test_eq3_with_flash_attention_and_dropout(tp: int) -> None:
    expected = SBH / tp * 34 + (STATS + LSE) / tp + RNG
    assert _layer_bytes(tp=tp, sp=True) == pytest.approx(expected, abs=RNG)


def test_a_cpu_keeps_the_captured_fallback() -> None:
    """A device without a fused kernel for dropout (the CPU) runs the fallback as captured:
    eq. 1 with its attention core, like the hand-written chain."""
    expected = SBH * (34 + 5 * A * S / H) + STATS
    assert _layer_bytes(fused=False) == pytest.approx(expected)


def test_hand_written_attention_is_left_unfused() -> None:
    """Only SDPA's fallback is fused: a model that writes its attention out (attention=math,
    Megatron-LM 2021) keeps its (s, s) tensors."""
    graph = _graph(attention="math")
    fused, captured_ = (model_work(graph, scale=0.5, fused_attention=f)
                        for f in (True, False))
    assert fused == captured_


def test_fused_kernel_flops_and_no_score_traffic() -> None:
    """One attention kernel per direction: forward 4 b a s^2 d (the two matmuls at full s^2, as
    the unfused chain counts them), backward 10 b a s^2 d (the scores recomputed, then four
    matmuls). With dropout on, the vector kernels move only the two hidden-state dropouts'
    extra bytes over the same model without dropout, never an (s, s) tensor."""
    d = H // A
    works = {p: model_work(_graph(dropout=p), scale=0.5, fuse="kernels")
             for p in (0.0, 0.1)}
    block = works[0.1].block
    assert block is not None
    fwd = [op for op in block.forward if "attention" in op.target]
    bwd = [op for op in block.backward if "attention" in op.target]
    assert [op.flops for op in fwd] == [4 * B * A * S * S * d]
    assert [op.flops for op in bwd] == [10 * B * A * S * S * d]

    def vector_bytes(p: float, phase: str) -> float:
        section = works[p].block
        assert section is not None
        return sum(op.bytes for op in getattr(section, phase) if op.kind == "vector")

    # Forward: each of the two bias-dropout-add kernels writes a 1-byte mask of the hidden
    # state. Backward: at most each dropout's own kernel (read the 2-byte gradient and the
    # mask, write 2 bytes), 5 sbh each; the fallback's (s, s) tensors would add a s^2 b each.
    assert vector_bytes(0.1, "forward") - vector_bytes(0.0, "forward") == 2 * SBH
    assert 0 < vector_bytes(0.1, "backward") - vector_bytes(0.0, "backward") <= 2 * 5 * SBH


def test_step_time_with_dropout_is_no_faster_than_without() -> None:
    """Dropout adds work (the hidden-state masks) and never removes any; the fused kernel is
    faster than the fallback the CPU captured, which moves every (s, s) tensor."""
    spec = load_system("h100-cluster", devices=8)
    plan = parse_plan("dp=2,tp=4,pp=1,mb=2,sp=on", "test plan")
    model = {"layers": 4, "hidden": 1024, "heads": 16, "seq": 2048, "vocab": 1024,
             "ffn": 4096, "attention": "flash"}
    times = {}
    for p in (0.0, 0.1):
        program, _ = compile_model("gpt", {**model, "dropout": p}, spec, plan, batch=8)
        times[p] = simulate(program).step_time_s
    graph, _ = captured("gpt", {**model, "dropout": 0.1}, 2, None)
    fallback = model_work(graph, tp=4, sp=True, scale=0.5, fused_attention=False)
    slow = simulate(compile_program(fallback, plan, spec, 8, tokens_per_sample=2048))
    assert times[0.0] <= times[0.1] < slow.step_time_s


def test_gpt3_175b_with_flash_and_dropout_fits_on_80_gb() -> None:
    """GPT-3 175B, flash attention and dropout 0.1 on 128 H100 with Megatron's plan
    dp=4, tp=4, pp=8, mb=1, interleave=12, sp, ZeRO-2, BF16, by hand:
    - state: stage 0 holds 12 layers of 12 h^2 + 13 h parameters and the vocabulary-parallel
      embeddings ((V + s) h), all split by t; 2 bytes of BF16 weights, and over dp the FP32
      master (4), gradients (4) and Adam moments (8): 6 bytes per parameter;
    - activations: interleaved 1F1B keeps L (1 + (p - 1) / (p v)) = 103 layers in flight on
      stage 0 (Korthikanti et al. 2022 §4.2.3), each eq. 3 with flash's terms; the 2p
      micro-batches of its first chunk in flight also keep the first layer's input (2 sbh/t).
    The unfused fallback kept 5 a s / h = 80 sbh/t more per layer: 110 GB, over capacity."""
    h, s, layers, vocab, t, p, v, dp = 12288, 2048, 96, 50257, 4, 8, 12, 4
    params = (layers // p * (12 * h * h + 13 * h) + (vocab + s) * h) / t
    state = params * (2 + (4 + 4 + 8) / dp)
    sbh = s * h
    layer = sbh / t * 34 + (16 * s + 4 * 96 * s) / t + RNG / t
    activations = layers * (1 + (p - 1) / (p * v)) * layer + 2 * p * 2 * sbh / t
    spec = load_system("h100-cluster", devices=128)
    plan = parse_plan("dp=4,tp=4,pp=8,mb=1,interleave=12,sp=on,zero=2", "test plan")
    program, _ = compile_model("gpt3-175b", {"attention": "flash", "dropout": 0.1}, spec, plan,
                               batch=1536)
    mem = device_memory(program)
    assert mem.activations == pytest.approx(activations, rel=1e-6)
    assert mem.total == pytest.approx(state + activations, rel=1e-2)
    assert state + activations < 80e9 and mem.fits


def test_the_system_decides_whether_attention_is_fused() -> None:
    """`compile_model` (and the plan search's screen) fuse SDPA's captured fallback for devices
    with a fused dropout kernel (GPUs, D1), never for the CPU, which runs the fallback."""
    from dojo.sim.search import _Screen

    model = {"layers": 2, "hidden": 64, "heads": 4, "seq": 64, "vocab": 256, "ffn": 256,
             "attention": "flash", "dropout": 0.1}
    plan = parse_plan("dp=1,mb=2", "test plan")

    def fused_ops(system: str) -> tuple[int, int]:
        spec = load_system(system, devices=1)
        program, _ = compile_model("gpt", model, spec, plan, batch=2)
        screened = _Screen("gpt", model, spec, 2, None)._work(plan)
        counts = []
        for work in (program.work, screened):
            # the block section is one instance of the repeated (folded) block
            times = ((work.pre, 1), (work.block, work.repeat), (work.post, 1))
            counts.append(sum(n * sum("attention" in op.target for op in sec.forward)
                              for sec, n in times if sec))
        return counts[0], counts[1]

    assert fused_ops("cpu") == (0, 0)
    assert fused_ops("h100-cluster") == (2, 2)  # one kernel per layer
