"""Op-level recompute policies (recompute=ops:..., matmuls) against closed forms of a GPT block.

A GPT-2 block's weight matmuls (addmm) produce QKV (3 s b h), the attention projection (s b h),
FC1 (4 s b h) and FC2 (s b h): 9 s b h elements, 18 s b h bytes in BF16. A policy that keeps the
linears' outputs (ops:mm) keeps those plus the block's input (the checkpoint, as `full` keeps
it), so per block it holds 18 s b h bytes more than full recompute. With tp=2 the column-parallel
outputs (QKV, FC1) split and the row-parallel ones (projection, FC2: whole after the all-reduce)
do not: 2 (1.5 + 1 + 2 + 1) = 11 s b h bytes; sequence parallelism splits all of them: 9 s b h.
The backward reruns the block's forward except the saved ops.
"""

from __future__ import annotations

import pytest

from dojo.compiler.code import hot
from dojo.compiler.work import OpCost
from dojo.errors import ConfigError
from dojo.hardware.loader import load_system
from dojo.plan.plan import parse_plan
from dojo.plan.policies import op_class
from dojo.sim.memory import device_memory
from dojo.sim.session import compile_model
from dojo.sim.simulate import device_model, simulate

S, B, H, A, L = 256, 2, 128, 4, 4
SBH = S * B * H
MODEL = {"layers": L, "hidden": H, "heads": A, "seq": S, "vocab": 512, "ffn": 4 * H}


def _program(plan: str, devices: int = 1):  # type: ignore[no-untyped-def]
    spec = load_system("h100-cluster", devices=devices)
    return compile_model("gpt", MODEL, spec, parse_plan(plan), B)[0]


@pytest.mark.parametrize(("tp", "sp", "per_block"), [(1, "off", 18), (2, "off", 11),
                                                    (2, "on", 9)])
def test_kept_linear_outputs_match_the_closed_form(tp: int, sp: str, per_block: int) -> None:
    base = f"tp={tp},sp={sp},mb={B}"
    full = _program(f"{base},recompute=full", tp).chunks[0].saved_bytes
    ops = _program(f"{base},recompute=ops:mm", tp).chunks[0].saved_bytes
    assert ops - full == pytest.approx(L * per_block * SBH)


def test_attention_policy_adds_the_kernel_output_and_logsumexp() -> None:
    mm = _program(f"mb={B},recompute=ops:mm").chunks[0].saved_bytes
    both = _program(f"mb={B},recompute=ops:mm+attention").chunks[0].saved_bytes
    lse = 4 * A * S * B      # FP32 row logsumexp
    rng = 2 * 8              # Philox seed and offset (int64): at most
    assert L * (2 * SBH + lse) <= both - mm <= L * (2 * SBH + lse + rng)
    assert _program(f"mb={B},recompute=matmuls").chunks[0].saved_bytes == both


def test_recompute_reruns_every_forward_kernel_but_the_saved_ones() -> None:
    program = _program(f"mb={B},recompute=ops:mm")
    block = program.work.block
    assert block is not None
    rerun = [o for o in block.forward if not (o.kind == "matrix" and op_class(o.target) == "mm")]
    assert sum(1 for o in block.forward if op_class(o.target) == "mm") == 4  # qkv, proj, fc1, fc2
    # the first block's rerun finds its call sites cold, the others hot (`compiler.code`)
    assert [hot(o) for o in program.chunks[0].recompute] == [hot(o) for o in rerun] * L
    dev = device_model(program)
    expected = L * sum(dev.op_time(o) for o in rerun)
    result = simulate(program)
    assert result.breakdown_s["recompute"] == pytest.approx(program.microbatches * expected)
    full = simulate(_program(f"mb={B},recompute=full")).breakdown_s["recompute"]
    assert 0 < result.breakdown_s["recompute"] < full


def test_peak_memory_adds_one_rerun_block() -> None:
    program = _program(f"mb={B},recompute=ops:mm")
    none = _program(f"mb={B}").work.block
    assert none is not None
    mem = device_memory(program)
    kept = program.chunks[0].saved_bytes
    # one micro-batch in flight at pp=1, plus one block's recomputed tensors in the backward
    assert mem.activations == pytest.approx(kept + none.saved_bytes - (2 * SBH + 18 * SBH))


def test_unsaved_linears_rerun_their_tp_collectives() -> None:
    program = _program(f"tp=2,sp=on,mb={B},recompute=ops:attention", 2)
    mm = _program(f"tp=2,sp=on,mb={B},recompute=ops:mm", 2).chunks[0]
    block = program.work.block
    assert mm.tp_recompute == () and block is not None
    assert [c.kind for c in program.chunks[0].tp_recompute] == \
        [k for k, _ in block.tp_forward] * L  # the blocks' own, not the embedding's or head's


@pytest.mark.parametrize("bad", ["ops:", "ops:mm+relu", "ops:mm+mm", "some"])
def test_bad_policies_are_refused_in_one_line(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_plan(f"recompute={bad}")
    assert "recompute" in str(err.value) and "\n" not in str(err.value)


def test_op_classes() -> None:
    assert [op_class(t) for t in ("aten.addmm.default", "aten.mm.default", "aten.bmm.default",
                                  "aten._scaled_dot_product_flash_attention.default",
                                  "aten.convolution.default", "aten.add.Tensor")] == \
        ["mm", "mm", "bmm", "attention", "conv", None]
    assert OpCost("vector", 0, 0, "x").kind == "vector"
