"""PyTorch's CPU flash attention on an eager device: the score elements it computes
(`dojo.compiler.eager_cpu.attention_scores`) and their cost (`attention_score_s`). Each
expected count is worked by hand from the kernel's blocking: 32 query rows per block below 192
rows, 64 from 192, 256 from 768, each causal block stopping at its last row's key."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from bench_module import load_bench

from dojo.compiler.work import OpCost
from dojo.sim.costs import DeviceModel, load_calibration


class _Attention(torch.nn.Module):
    def __init__(self, heads: int, dim: int, causal: bool) -> None:
        super().__init__()
        self.heads, self.dim, self.causal = heads, dim, causal
        self.w = torch.nn.Parameter(torch.randn(heads * dim, 3 * heads * dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (x @ self.w).view(b, n, 3, self.heads, self.dim).permute(2, 0, 3, 1, 4)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=self.causal)


# (batch, heads, sequence, causal) -> scores, by hand
CASES = [
    (1, 4, 64, True, 4 * (32 * 32 + 32 * 64)),                       # 2 blocks of 32
    (1, 4, 64, False, 4 * 64 * 64),
    (2, 3, 100, True, 6 * (32 * 32 + 32 * 64 + 32 * 96 + 4 * 100)),  # last block 4 rows
    (1, 2, 200, True, 2 * (64 * 64 + 64 * 128 + 64 * 192 + 8 * 200)),  # 64-row blocks
]


@pytest.mark.parametrize("batch,heads,seq,causal,expected", CASES)
def test_scores_follow_the_kernels_blocks(batch: int, heads: int, seq: int, causal: bool,
                                          expected: int) -> None:
    """The captured forward and backward flash-attention ops each compute `expected` scores."""
    from dojo.capture import capture
    from dojo.compiler.eager_cpu import attention_scores

    module = _Attention(heads, 8, causal)
    graph = capture(module, (torch.randn(batch, seq, heads * 8),), lambda y: y.square().mean(),
                    torch.optim.SGD(module.parameters(), lr=0.0), name="att",
                    repeat_blocks=False).graph
    ops = [op for op in graph.ops if "flash_attention" in op.target]
    assert len(ops) == 2
    assert [attention_scores([op], graph) for op in ops] == [expected] * 2


def _device(**fields: float | bool) -> DeviceModel:
    cal = replace(load_calibration("cpu"), **fields)  # type: ignore[arg-type]
    return DeviceModel(peak_flops=1e11, vector_flops=1e11, mem_bytes_per_s=1e10, calibration=cal)


def test_scores_cost_their_figure_per_phase_on_an_eager_device_only() -> None:
    """A fused attention op with n scores costs n x `attention_score_s` forward and n x
    `attention_score_backward_s` backward on top of its GEMM time; a compiled device, none."""
    on = _device(attention_score_s=1e-9, attention_score_backward_s=5e-9, eager=True)
    off = _device(attention_score_s=0.0, attention_score_backward_s=0.0, eager=True)
    op = OpCost("matrix", 1e6, 1e4, "aten._scaled_dot_product_flash_attention_for_cpu.default",
                scores=12288.0)
    assert on.op_time(op) - off.op_time(op) == pytest.approx(12288 * 1e-9, rel=1e-9)
    back = on.for_phase("backward").op_time(op) - off.for_phase("backward").op_time(op)
    assert back == pytest.approx(12288 * 5e-9, rel=1e-9)
    compiled = _device(attention_score_s=1e-9, eager=False)
    assert compiled.op_time(op) == replace(compiled, calibration=replace(
        compiled.calibration, attention_score_s=0.0)).op_time(op)


def test_a_tp_split_of_the_heads_splits_the_scores() -> None:
    """gpt's small preset at tp=2: each rank's attention ops carry half the scores of tp=1."""
    from dojo.runtime import Job
    from dojo.runtime.job import simulate_job

    def scores(plan: str) -> float:
        program = simulate_job(Job(model="gpt", plan=f"{plan},precision=fp32",
                                   system="cpu")).program
        return sum(op.scores for c in program.chunks for op in c.forward + c.backward)

    whole, split = scores("dp=1"), scores("tp=2")
    assert whole > 0 and split == pytest.approx(whole / 2, rel=1e-9)


@pytest.mark.slow
def test_calibration_measures_positive_score_costs() -> None:
    """attention_costs.score_costs on this machine: the backward's work per score exceeds the
    forward's, both positive."""
    forward, backward = load_bench("attention_costs").score_costs(rounds=2, repeat=40)
    assert 0.0 < forward < backward
