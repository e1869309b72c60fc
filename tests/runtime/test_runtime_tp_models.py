"""Megatron tensor parallelism for Llama and ViT (tp=2 over gloo) against single-process eager
PyTorch, and the collectives ViT's ranks run against the program's.

Reference: the unsharded Llama small preset (RMSNorm, RoPE, grouped-query attention with
kv_heads=2, SwiGLU, untied head), trained step by step in one process with `F.cross_entropy`
over the whole vocabulary (`reference.eager_run`). Each rank's slices are placed back by their
`shards` indices: losses, updated parameters and last gradients must match within rtol 1e-5,
atol 1e-6 (the split only reorders FP32 sums; a query head paired with the wrong kv head, a
missed all-reduce or a head row left out moves them by 1e-3 or more). SGD, whose update is
linear in the gradient, as in test_runtime_parity. ViT (small preset, 2 encoder blocks) keeps
its patch embedding and classification head whole, as Megatron's ViT does, and so does the
compiled program: the ranks run the program's tp collectives.
"""

from __future__ import annotations

from typing import Any

import pytest

from dojo.errors import ConfigError, DojoError
from dojo.runtime import Job, launch, run_distributed, simulate_job
from dojo.runtime.job import build_bundle, dumps_program
from dojo.runtime.tensor_parallel_models import shard_model

from .reference import check_parity

RTOL, ATOL = 1e-5, 1e-6
LLAMA = {"optimizer": "sgd", "lr": 0.05}


@pytest.mark.parametrize("plan", ["tp=2,precision=fp32", "tp=2,sp=on,precision=fp32"])
def test_llama_tp_steps_equal_eager(plan: str) -> None:
    job = Job(model="llama", plan=plan, batch=2, seq=16, overrides=LLAMA, steps=2,
              return_state=True)
    results = check_parity(job, RTOL, ATOL)
    shards: list[dict[str, Any]] = [r["shards"] for r in results]
    # Megatron's split, read from the slices each rank holds: half of the query heads' rows,
    # half of the kv heads' rows, half of gate/up/down, half of the vocabulary in embed/output.
    hd = 64 // 4
    for rank, own in enumerate(shards):
        assert own["blocks.0.attn.wq.weight"][2] == list(range(rank * 2 * hd, (rank + 1) * 2 * hd))
        assert own["blocks.0.attn.wk.weight"][2] == list(range(rank * hd, (rank + 1) * hd))
        assert own["blocks.0.attn.wo.linear.weight"][1] == 1  # input columns
        assert own["blocks.0.ffn.w2.linear.weight"][1] == 1
        assert own["output.weight"][2] == own["embed.weight"][2] == list(
            range(rank * 256, (rank + 1) * 256))


@pytest.mark.slow
def test_llama_tp_with_pp_equals_eager() -> None:
    job = Job(model="llama", plan="tp=2,pp=2,mb=1,precision=fp32", batch=2, seq=16,
              overrides=LLAMA, steps=2, return_state=True)
    check_parity(job, RTOL, ATOL)


def test_llama_tp_refuses_kv_heads_it_cannot_split() -> None:
    # 4 query heads sharing 1 kv head: the kv head cannot be split over 2 ranks. The plan check
    # refuses before any rank starts; the runtime's own split refuses a program that got past.
    job = Job(model="llama", plan="tp=2,precision=fp32", batch=2, seq=16,
              overrides={**LLAMA, "kv_heads": 1})
    with pytest.raises(ConfigError, match=r"'tp' = 2: .*kv_heads = 1 \(1 / 2 = 0.5\)"):
        run_distributed(job, timeout_s=30)
    with pytest.raises(DojoError, match=r"kv_heads=1 is not divisible by tp=2 \(1 / 2 = 0.5\)"):
        shard_model(build_bundle(job).model, 2, 0, None)


def test_vit_tp_steps_equal_eager() -> None:
    job = Job(model="vit-b16", plan="tp=2,precision=fp32", batch=2, overrides=LLAMA, steps=2,
              return_state=True)
    results = check_parity(job, RTOL, ATOL)
    for res in results:  # the head and the patch embedding are whole on every rank
        assert "head.weight" not in res["shards"] and "patch.weight" not in res["shards"]


def test_vit_tp_collectives_are_megatrons() -> None:
    """Per micro-batch, 2 all-reduces per encoder block each way (f and g around attention and
    MLP), each of the (mb, S, H) activation, and nothing else: the patch embedding and the
    classification head are whole on every rank (Megatron's ViT), so the loss needs no row
    statistics and the head's input gradient no f. The program carries exactly these (before
    the compiler kept the head whole it carried 3 more: the loss's max and sums forward, the
    head's f backward), so the runtime issues the program's collectives."""
    from .test_runtime_vocab_parallel import _count_worker

    job = Job(model="vit-b16", plan="tp=2,precision=fp32", batch=2, steps=1, system="cpu")
    program = simulate_job(job).program
    (chunk,) = program.chunks
    cfg = build_bundle(job).config
    tokens = (cfg.image // cfg.patch) ** 2 + 1
    block = ("all_reduce", program.plan.mb * tokens * cfg.hidden * 4)  # FP32 bytes
    expected = [block] * (2 * cfg.layers)
    for seen in launch(_count_worker, 2, (job, dumps_program(program)), timeout_s=60):
        assert sorted(seen["forward"]) == expected
        assert sorted(seen["backward"]) == expected
    assert sorted((c.kind, int(c.nbytes)) for c in chunk.tp_forward) == expected
    assert sorted((c.kind, int(c.nbytes)) for c in chunk.tp_backward) == expected
