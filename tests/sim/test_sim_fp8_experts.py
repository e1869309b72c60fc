"""precision=fp8 for the routed experts' grouped GEMMs (TransformerEngine's GroupedLinear),
against closed forms: the expert batched matmuls run at the FP8 roofline on 1-byte operands,
and each expert's input, output gradient and weight pays the per-tensor scaling casts of one
FP8 Linear (6 bytes per element: amax read 2, cast read 2, FP8 data and transpose 1 + 1)."""

from __future__ import annotations

import pytest

from dojo.compiler.experts import MoeLayout, expert_batches
from dojo.compiler.work import OpCost
from dojo.hardware.loader import load_system
from dojo.sim.fp8 import Fp8Timer, as_fp8, cast_bytes, fp8_device, is_fp8_gemm
from dojo.sim.simulate import device_for


def _grouped(b: int, m: int, n: int, k: int) -> OpCost:
    """b expert GEMMs y (m, n) = x (m, k) W (k, n) in BF16, as one batched matmul."""
    return OpCost("matrix", 2.0 * b * m * n * k, 2.0 * b * (m * k + k * n + m * n),
                  "aten.bmm.default", (b, m, n), out_bytes=2.0 * b * m * n)


def test_expert_batches_after_ep() -> None:
    # DeepSeek-V3: 256 experts; the capture's batch is 256 (or 256 / tp), ep 64 leaves 4 (or 2)
    layout = MoeLayout(experts=256, top_k=8, hidden=7168, tokens=4096, block_layers=1,
                       outer_layers=0, block_params=3 * 256 * 7168 * 2048, outer_params=0,
                       width=2048, rows=128)
    assert expert_batches(layout, 64, 2) == {4, 2}
    assert expert_batches(layout, 1, 1) == {256}


def test_grouped_gemm_is_fp8_only_with_its_expert_batch() -> None:
    op = _grouped(4, 4096, 2048, 7168)
    assert is_fp8_gemm(op, None, frozenset({4}))
    assert not is_fp8_gemm(op, None)                    # attention's bmm stays BF16
    assert not is_fp8_gemm(op, frozenset(), frozenset({4}))   # outside the repeated block
    spec = load_system("h100-cluster")
    dev = device_for(spec, "fp8")
    dev8 = fp8_device(dev, spec)
    timer = Fp8Timer(dev, dev8, None, 1, frozenset({4}))
    assert timer.op_time(op) == pytest.approx(dev8.op_time(as_fp8(op)))
    assert timer.op_time(op) < dev.op_time(op)
    # FP8 operands: the reads halve, the BF16 output stays
    assert as_fp8(op).bytes == pytest.approx(4 * (4096 * 7168 + 7168 * 2048) + 2 * 4 * 4096 * 2048)


def test_grouped_gemm_casts_each_expert() -> None:
    b, m, n, k = 4, 4096, 2048, 7168
    op = _grouped(b, m, n, k)
    assert cast_bytes(op, "forward") == 6 * b * m * k      # every expert's X (m, k)
    assert cast_bytes(op, "backward") == 6 * b * m * n     # every expert's dY (m, n)
    assert cast_bytes(op, "weight") == 6 * b * k * n       # every expert's W, once a step
    spec = load_system("h100-cluster")
    dev = device_for(spec, "fp8")
    timer = Fp8Timer(dev, fp8_device(dev, spec), None, 2, frozenset({b}))
    # forward: X's casts plus half (2 micro-batches) of the weights' once-a-step casts
    expected = dev.vector_time(6 * b * m * k) + dev.vector_time(6 * b * k * n) / 2
    assert timer.cast_time((op,), "forward") == pytest.approx(expected)
    assert timer.cast_time((op,), "backward") == pytest.approx(dev.vector_time(6 * b * m * n))


def test_expert_gemm_inputs_saved_in_fp8(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under FP8 a routed expert's weight-gradient GEMM reads the FP8 copy of its input, so the
    dispatched tokens (E, C, H) and the SwiGLU product (E, C, F), read in the backward only by
    the experts' weight gradients, are kept at 1 byte per element instead of BF16's 2: one MoE
    block saves (E C + 1) H + E C F bytes fewer than with the experts' GEMMs left in BF16 (the
    dispatch buffer has a spare row for dropped assignments, dojo.models.moe)."""
    import math

    from dojo.compiler import fp8 as cfp8
    from dojo.sim.session import graph_at

    e, k, h, f, seq, mb = 4, 2, 64, 96, 32, 2
    over = {"layers": 2, "hidden": h, "heads": 4, "kv_heads": 2, "ffn": 128, "expert_ffn": f,
            "experts": e, "top_k": k, "seq": seq, "vocab": 256}
    graph, _ = graph_at("moe", over, mb, seq)
    rows = math.ceil(mb * seq * k / e)                     # capacity 1.0
    with_experts = cfp8.fp8_saved_change(graph, 1, False, 0.5)
    monkeypatch.setattr(cfp8, "_expert_weight_shapes", lambda g: set())
    without = cfp8.fp8_saved_change(graph, 1, False, 0.5)
    assert with_experts - without == pytest.approx(-((e * rows + 1) * h + e * rows * f))
