"""What PyTorch's CPU flash attention costs beyond its GEMMs (bench/calibrate_cpu.py's
`attention_score_s` and `attention_score_backward_s`; one intra-op thread, FP32).

    .venv/bin/python bench/attention_costs.py [--rounds 3]

Causal `scaled_dot_product_attention` of three small shapes (batch, heads, sequence, head dim)
like the zoo's small presets', forward and backward, each the fastest of `repeat` calls, best of
`rounds`: its time beyond what the committed calibration's model gives the captured op (its
FLOPs at the GEMM rate, one dispatch), over the score elements the kernel computes
(`dojo.compiler.eager_cpu.attention_scores`); the median of the three shapes per phase.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench modules
from conv_costs import _best

SHAPES = ((1, 4, 64, 16), (1, 4, 64, 32), (1, 8, 128, 32))


class _Attention(torch.nn.Module):
    """q, k, v from one projection, then causal attention: what the capture sees."""

    def __init__(self, heads: int, dim: int) -> None:
        super().__init__()
        self.heads, self.dim = heads, dim
        self.w = torch.nn.Parameter(torch.randn(heads * dim, 3 * heads * dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (x @ self.w).view(b, n, 3, self.heads, self.dim).permute(2, 0, 3, 1, 4)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def _modelled(shape: tuple[int, int, int, int]) -> tuple[float, float, int, int]:
    """(forward s, backward s) the committed calibration's model gives the captured attention
    ops without their scores, and their score counts (forward, backward)."""
    from dojo.capture import capture
    from dojo.compiler.eager_cpu import attention_scores
    from dojo.compiler.work import OpCost
    from dojo.hardware import load_system
    from dojo.sim.simulate import device_for

    b, h, s, d = shape
    module = _Attention(h, d)
    graph = capture(module, (torch.randn(b, s, h * d),), lambda y: y.square().mean(),
                    torch.optim.SGD(module.parameters(), lr=0.0), name="attention",
                    repeat_blocks=False).graph
    dev = device_for(load_system("cpu"), "fp32")
    dev = replace(dev, calibration=replace(dev.calibration, attention_score_s=0.0,
                                           attention_score_backward_s=0.0))
    out: list[float] = []
    counts: list[int] = []
    for op in (o for o in graph.ops if "flash_attention" in o.target):
        cost = OpCost("matrix", float(op.flops), float(op.bytes_read + op.bytes_written),
                      op.target)
        out.append(dev.for_phase(op.phase).op_time(cost))
        counts.append(attention_scores([op], graph))
    return out[0], out[1], counts[0], counts[1]


def _timed(shape: tuple[int, int, int, int], rounds: int, repeat: int) -> tuple[float, float]:
    """(forward s, backward s) of causal attention of `shape`, fastest, best of `rounds`."""
    b, h, s, d = shape
    q, k, v = (torch.randn(b, h, s, d, requires_grad=True) for _ in range(3))
    gy = torch.randn(b, h, s, d)

    def fwd() -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        f = _best(fwd, repeat)
        both = _best(lambda: torch.autograd.grad(fwd(), (q, k, v), gy), repeat)
        best = [min(best[0], f), min(best[1], both - f)]
    return best[0], best[1]


def score_costs(rounds: int = 3, repeat: int = 100) -> tuple[float, float]:
    """(forward s, backward s) per score element beyond the modelled op (module docstring)."""
    per: list[tuple[float, float]] = []
    for shape in SHAPES:
        fwd, bwd = _timed(shape, rounds, repeat)
        model_f, model_b, n_f, n_b = _modelled(shape)
        per.append((max(0.0, fwd - model_f) / n_f, max(0.0, bwd - model_b) / n_b))
    return (statistics.median(f for f, _ in per), statistics.median(b for _, b in per))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    fwd, bwd = score_costs(args.rounds)
    print(f"attention_score_s = {fwd:.3e}\nattention_score_backward_s = {bwd:.3e}")


if __name__ == "__main__":
    main()
