"""Fused attention as a named kernel runs it (plan key `attn`, `dojo.sim.attention`).

The reference is the FlashAttention-3 paper (Shah et al. 2024, arXiv:2407.08608v2): its
Figure 5 (forward, BF16, H100 SXM5, head dim 128, causal) and Figure 6 (backward, head dim
128) bars at sequence length 4k, in TFLOP/s, counted as FlashAttention's benchmark counts them:
4 b s^2 h d forward, halved under a causal mask, times 2.5 for the backward. A call that
counts F FLOP at full s^2 (the simulator's count) then takes F / 2 / rate when causal.
All of these fail on the code before `attn` existed (no such plan key; fused attention at the
GEMM calibration; no causal mark on the captured op).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from dojo.compiler.fusion import flash_target
from dojo.compiler.work import OpCost, model_work
from dojo.errors import ConfigError
from dojo.hardware.loader import load_system
from dojo.plan.plan import ATTN_KERNELS, parse_plan
from dojo.sim.attention import kernel_names
from dojo.sim.session import captured
from dojo.sim.simulate import device_for

# Figure 5 / Figure 6 bars at 4k (TFLOP/s): (forward, backward)
PAPER = {"fa2": (319e12, 310e12), "cudnn": (518e12, 499e12), "fa3": (579e12, 542e12)}
H100_PEAK = 989.0e12   # h100-cluster's dense BF16 peak (the paper: 989.5)
FWD = "aten._scaled_dot_product_flash_attention_for_cpu.default"
BWD = "aten._scaled_dot_product_flash_attention_for_cpu_backward.default"


def _h100(attn: str):  # type: ignore[no-untyped-def]
    return device_for(load_system("h100-cluster"), "bf16", 1, attn)


@pytest.mark.parametrize("kernel", sorted(PAPER))
def test_causal_call_takes_half_its_counted_flops_at_the_published_rate(kernel: str) -> None:
    """A compute-bound causal call (b 8, s 4096, 16 heads of 128): forward F = 4 b s^2 h d
    counted, F / 2 executed at the Figure 5 rate; backward 2.5 F counted, at Figure 6's."""
    b, s, h, d = 8, 4096, 16, 128
    flops = 4.0 * b * s * s * h * d
    qkvo = 4 * b * s * h * d * 2.0
    dev = _h100(kernel)
    fwd_rate, bwd_rate = PAPER[kernel]
    launch = dev.calibration.launch_s
    fwd = dev.op_time(OpCost("matrix", flops, qkvo, FWD + "[causal]"))
    bwd = dev.op_time(OpCost("matrix", 2.5 * flops, 2 * qkvo, BWD + "[causal]"))
    tol = 3e-3  # the table keeps 3 digits of each fraction
    assert fwd - launch == pytest.approx(flops / 2 / fwd_rate, rel=tol)
    assert bwd - launch == pytest.approx(2.5 * flops / 2 / bwd_rate, rel=tol)
    # without the mask the kernel executes every counted FLOP
    full = dev.op_time(OpCost("matrix", flops, qkvo, FWD))
    assert full - launch == pytest.approx(flops / fwd_rate, rel=tol)


def test_memory_bound_call_is_bounded_by_its_bytes() -> None:
    """A call too short to be compute-bound (s 128) takes its bytes at the memory bandwidth."""
    b, s, h, d = 1, 128, 16, 128
    flops, nbytes = 4.0 * b * s * s * h * d, 4 * b * s * h * d * 2.0 * 1000
    dev = _h100("fa2")
    t = dev.op_time(OpCost("matrix", flops, nbytes, FWD + "[causal]"))
    bw = dev.mem_bytes_per_s * dev.calibration.vector_efficiency
    assert t == pytest.approx(nbytes / bw + dev.calibration.launch_s, rel=1e-9)


def test_auto_keeps_the_gemm_calibration() -> None:
    """`auto` times fused attention as before: (F + F_half) / (peak x e_max) + launch."""
    flops = 4.0 * 8 * 4096**2 * 16 * 128
    dev = _h100("auto")
    cal = dev.calibration
    t = dev.op_time(OpCost("matrix", flops, 0.0, FWD + "[causal]"))
    assert t == pytest.approx((flops + cal.matrix_half_flops)
                              / (H100_PEAK * cal.matrix_efficiency) + cal.launch_s, rel=1e-9)


def test_capture_marks_causal_calls_only() -> None:
    """The GPT's SDPA call (is_causal=True) is marked, forward and backward; ViT's is not."""
    def targets(model: str, cfg: dict[str, object]) -> list[str]:
        graph, _ = captured(model, cfg, 2, None)
        work = model_work(graph, tp=1, sp=False, scale=0.5, fused_attention=True)
        assert work.block is not None
        return [o.target for o in (*work.block.forward, *work.block.backward)
                if "attention" in o.target]

    gpt = targets("gpt", {"layers": 2, "hidden": 128, "heads": 2, "seq": 64, "vocab": 256,
                          "ffn": 512, "attention": "flash", "dropout": 0.0})
    assert gpt == [FWD + "[causal]", BWD + "[causal]"]
    # with dropout the capture records SDPA's math fallback; the fused kernel is marked from
    # the mask the fallback adds to the scores
    fallback = targets("gpt", {"layers": 2, "hidden": 128, "heads": 2, "seq": 64, "vocab": 256,
                               "ffn": 512, "attention": "flash", "dropout": 0.1})
    assert fallback == [flash_target(False, True), flash_target(True, True)]
    vit = targets("vit-b16", {"layers": 2, "hidden": 128, "heads": 2, "ffn": 512})
    assert vit and not any(t.endswith("[causal]") for t in vit)


def test_kernel_choices_match_the_table() -> None:
    assert kernel_names() == ATTN_KERNELS
    assert parse_plan("dp=8,attn=fa3").text() == "dp=8,tp=1,pp=1,attn=fa3"
    assert "attn" not in parse_plan("dp=8").text(full=True)


def test_unknown_kernel_and_unmeasured_device_are_refused() -> None:
    with pytest.raises(ConfigError, match="attn"):
        parse_plan("dp=8,attn=fa9")
    with pytest.raises(ConfigError) as err:
        device_for(load_system("a100-cluster"), "bf16", 1, "fa2")
    assert "a100" in str(err.value) and "\n" not in str(err.value)


def test_cli_refuses_an_unmeasured_kernel_in_one_line() -> None:
    run = subprocess.run([sys.executable, "-m", "dojo.cli.main", "simulate", "gpt",
                          "--system", "a100-cluster", "--devices", "8",
                          "--plan", "dp=8,attn=fa2", "--batch", "8"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert "attn" in run.stderr
