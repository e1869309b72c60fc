"""Sequence parallelism's re-gather of the saved input for the weight gradient, by closed forms.

With sp a column-parallel linear keeps only its input's sequence shard for backward and
all-gathers it again there to compute its weight gradient, beside the input-gradient GEMM:
Megatron-LM's LinearWithGradAccumulationAndAsyncCommunication.backward
(megatron/core/tensor_parallel/layers.py: `handle = dist_all_gather_func(all_gather_buffer,
input, ...)` before `grad_input = grad_output.matmul(weight)`) and TransformerEngine's
LayerNormLinear / LayerNormMLP (`gather_along_first_dim(ln_out, ...)`, or the userbuffers bulk
overlap `ub_bulk_dgrad` with tp comm overlap). A Llama or GPT block has two such shared inputs
(QKV's and fc1's), each the (s, b, h) tensor: 2 all-gathers of s b h x bytes per element more in
backward than in forward, and none without sp (the whole input is saved). The memory model
already saves that shard (`work._is_split`).
"""

from __future__ import annotations

import pytest

from dojo.hardware.loader import load_system
from dojo.plan.plan import parse_plan
from dojo.sim.memory import device_memory
from dojo.sim.session import compile_model
from dojo.sim.simulate import chunk_times, device_model

L, B, S, H, NH, FFN, V = 2, 2, 64, 256, 4, 512, 512
LLAMA = {"layers": L, "hidden": H, "heads": NH, "kv_heads": 2, "ffn": FFN, "vocab": V,
         "seq": S}
GPT = {"layers": L, "hidden": H, "heads": NH, "vocab": V, "seq": S}
TP = 8
ACT_BF16 = 2.0 * S * B * H   # one (s, b, h) activation in BF16, bytes


def _program(model: str, overrides: dict[str, object], sp: bool):  # type: ignore[no-untyped-def]
    spec = load_system("h100-cluster", devices=TP)
    plan = parse_plan(f"dp=1,tp={TP},mb={B},sp={'on' if sp else 'off'}", "test plan")
    return compile_model(model, overrides, spec, plan, B)[0]


def _bytes(comms, kind: str) -> list[float]:  # type: ignore[no-untyped-def]
    return sorted(b for k, b in comms if k == kind and b >= ACT_BF16)


@pytest.mark.parametrize(("model", "overrides"), [("llama", LLAMA), ("gpt", GPT)])
def test_block_backward_gathers_each_shared_input_again(model: str,
                                                        overrides: dict[str, object]) -> None:
    work = _program(model, overrides, sp=True).work
    assert work.block is not None
    # forward: the all-gathers before QKV and fc1 (and the reduce-scatters after proj and fc2)
    assert _bytes(work.block.tp_forward, "all_gather") == [ACT_BF16] * 2
    assert _bytes(work.block.tp_forward, "reduce_scatter") == [ACT_BF16] * 2
    # backward: the conjugates (all-gathers before proj's and fc2's input gradients,
    # reduce-scatters of QKV's and fc1's) plus one re-gather per shared input
    assert _bytes(work.block.tp_backward, "all_gather") == [ACT_BF16] * 4
    assert _bytes(work.block.tp_backward, "reduce_scatter") == [ACT_BF16] * 2


def test_head_input_is_gathered_again_and_no_gather_without_sp() -> None:
    """The output layer is column-parallel too (its input is the final norm's, sequence-sharded):
    one re-gather in the head's backward. Without sp nothing is gathered."""
    work = _program("llama", LLAMA, sp=True).work
    assert _bytes(work.post.tp_backward, "all_gather") == [ACT_BF16] * 2
    plain = _program("llama", LLAMA, sp=False).work
    assert plain.block is not None
    assert not [k for k, _ in plain.block.tp_backward + plain.post.tp_backward
                if k == "all_gather"]


def test_backward_tp_time_by_bandwidth() -> None:
    """Without tp comm overlap every tp collective is exposed. One pipeline stage holds the
    embedding, L blocks and the head: 2 L + 1 column-parallel input gradients (QKV's and fc1's
    per block, the head's), each a reduce-scatter, the conjugate all-gather and the re-gather,
    all of one (s, b, h) BF16 tensor, as rings over the 8 GPUs of a DGX H100 on NVLink:
    (n - 1) (latency + bytes / (n x 450 GB/s x link efficiency 0.80)), latency = two 0.7 us
    NVLink hops through the NVSwitch + the collective's 8 us (h100-cluster.toml,
    calibration/h100.toml); RMSNorm on the sequence shard and the loss reduce nothing in
    backward."""
    program = _program("llama", LLAMA, sp=True)
    (chunk,) = program.chunks
    t = chunk_times(program, chunk, device_model(program), device_memory(program))
    n, lat, bw = TP, 2 * 0.7e-6 + 8.0e-6, 450.0e9 * 0.80
    ring = (n - 1) * (lat + ACT_BF16 / (n * bw))
    assert t.tp_backward == pytest.approx((2 * L + 1) * 3 * ring, rel=1e-9)
