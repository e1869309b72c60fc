"""Megatron-Core tensor parallelism for the MoE decoders (tp=2 over gloo) against
single-process eager PyTorch, and the collectives their ranks issue against the program's.

Reference: the unsharded model (`reference.eager_run`), trained in one process with
`F.cross_entropy` over the whole vocabulary. Each rank's slices are placed back by their
`shards` indices: losses, updated parameters and last gradients must match within rtol 1e-5,
atol 1e-6 (a split only reorders FP32 sums; a router that saw a partial hidden state, a missed
all-reduce or an expert column left out moves them by 1e-3 or more). SGD, as in
test_runtime_tp_models. Capacity dispatch drops tokens per micro-batch, so a run with one
micro-batch (batch 1) matches the whole model at the presets' capacity 1.0, drops included;
with several micro-batches, or sp's per-shard capacity, the capacity is set so that no token is
dropped (capacity = experts / top_k), where every split equals the whole model.
"""

from __future__ import annotations

from typing import Any

import pytest

from dojo.runtime import Job, launch, simulate_job
from dojo.runtime.job import build_bundle, dumps_program

from .reference import check_parity

RTOL, ATOL = 1e-5, 1e-6
SGD = {"optimizer": "sgd", "lr": 0.05}
NO_DROP = {**SGD, "capacity": 2.0}  # moe's small preset: 4 experts, top-2


def test_moe_tp_steps_equal_eager() -> None:
    job = Job(model="moe", plan="tp=2,precision=fp32", batch=1, seq=16, overrides=SGD, steps=2,
              return_state=True)
    results = check_parity(job, RTOL, ATOL)
    for rank, res in enumerate(results):
        own = res["shards"]
        assert "blocks.0.ffn.gate.weight" not in own  # the router is whole on every rank
        ffn = list(range(rank * 32, (rank + 1) * 32))  # expert_ffn 64 over 2 ranks
        assert tuple(own["blocks.0.ffn.experts.w1"][1:]) == (2, ffn)  # (E, H, F) columns
        assert tuple(own["blocks.1.ffn.experts.w2"][1:]) == (1, ffn)  # (E, F, H) rows


def test_deepseek_tp_steps_equal_eager() -> None:
    # latent attention (q_a, kv_a whole; q_b, kv_b, wo by heads), a dense first layer, a shared
    # expert and the sigmoid, group-limited router
    job = Job(model="deepseek-v3", plan="tp=2,precision=fp32", batch=1, seq=16, overrides=SGD,
              steps=2, return_state=True)
    results = check_parity(job, RTOL, ATOL)
    for res in results:
        own = res["shards"]
        assert "blocks.0.attn.kv_a.weight" not in own and "dense.0.attn.q_a.weight" not in own
        assert {"blocks.0.ffn.shared.w2.linear.weight", "dense.0.ffn.w1.weight"} <= set(own)
