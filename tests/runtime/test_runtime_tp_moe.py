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


@pytest.mark.parametrize("model, plan", [("moe", "tp=2,precision=fp32"),
                                         ("moe", "tp=2,sp=on,precision=fp32"),
                                         ("deepseek-v3", "tp=2,sp=on,precision=fp32")])
def test_moe_accumulation_and_sp_equal_eager(model: str, plan: str) -> None:
    # 2 micro-batches; deepseek-v3's small preset: 8 experts, top-2, so capacity 4 drops none
    capacity = 2.0 if model == "moe" else 4.0
    job = Job(model=model, plan=plan, batch=2, seq=16, overrides={**SGD, "capacity": capacity},
              steps=2, return_state=True)
    check_parity(job, RTOL, ATOL)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["moe", "deepseek-v3"])
def test_moe_tp_with_pp_equals_eager(model: str) -> None:
    # deepseek-v3's dense first layer rides with the embedding on stage 0; 8 experts, top-2
    capacity = 2.0 if model == "moe" else 4.0
    job = Job(model=model, plan="tp=2,pp=2,mb=1,precision=fp32", batch=2, seq=16,
              overrides={**SGD, "capacity": capacity}, steps=2, return_state=True)
    check_parity(job, RTOL, ATOL)


@pytest.mark.parametrize("model, plan", [("moe", "tp=2,precision=fp32"),
                                         ("moe", "tp=2,sp=on,precision=fp32"),
                                         ("deepseek-v3", "tp=2,precision=fp32"),
                                         ("deepseek-v3", "tp=2,sp=on,precision=fp32")])
def test_moe_collectives_per_micro_batch_are_the_programs(model: str, plan: str) -> None:
    """The ranks issue the program's tp collectives, per micro-batch and phase, and both are
    Megatron-Core's in closed form (module docstring of dojo.runtime.tensor_parallel_moe)."""
    from .test_runtime_vocab_parallel import _count_worker

    job = Job(model=model, plan=plan, batch=2, steps=1, system="cpu")
    program = simulate_job(job).program
    (chunk,) = program.chunks

    def listed(comms: Any) -> list[tuple[str, int]]:
        return sorted((c.kind, int(c.nbytes)) for c in comms)

    for seen in launch(_count_worker, 2, (job, dumps_program(program)), timeout_s=60):
        assert sorted(seen["forward"]) == listed(chunk.tp_forward)
        assert sorted(seen["backward"]) == listed(chunk.tp_backward)
    g, f, rope, loss = _megatron(build_bundle(job).config, program.plan.mb)
    if "sp" in plan:  # g: reduce-scatter, its gradient all-gathered; f: the converse, and the
        # saved shard of a linear's input (not the rotary key) gathered again for its wgrad
        fwd = [("reduce_scatter", n) for n in g] + [("all_gather", n) for n in f + rope]
        bwd = [("all_gather", n) for n in g + f] + [("reduce_scatter", n) for n in f + rope]
    else:
        fwd = [("all_reduce", n) for n in g]
        bwd = [("all_reduce", n) for n in f + rope]
    assert listed(chunk.tp_forward) == sorted(fwd + [("all_reduce", n) for n in loss])
    assert listed(chunk.tp_backward) == sorted(bwd)


def _megatron(cfg: Any, mb: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """Bytes per micro-batch of the g's (row-parallel outputs, the embedding), the f's
    (column-parallel inputs), the rotary keys' f and the loss's statistics, FP32."""
    tokens = mb * cfg.seq
    act = tokens * cfg.hidden * 4  # an (mb, S, H) activation
    rows = -(-tokens * cfg.top_k // cfg.experts)  # capacity 1.0
    buf = cfg.experts * rows * cfg.hidden * 4  # the dispatched (E, C, H) buffer
    moe, dense = cfg.layers - cfg.dense_layers, cfg.dense_layers
    ffns = dense + moe * (cfg.shared_experts > 0)  # SwiGLUs split as Llama's
    g = [act] * (1 + cfg.layers + ffns) + [buf] * moe  # embedding, wo, w2s, experts
    f = [act] * (1 + ffns) + [buf] * moe  # the head, the SwiGLUs, the experts
    rope: list[int] = []
    if cfg.attention == "gqa":
        f += [act] * cfg.layers  # the attention's input
    else:  # the two latents, and the rotary key every head shares
        f += [tokens * w * 4 for w in (cfg.q_lora_rank, cfg.kv_lora_rank)
              for _ in range(cfg.layers)]
        rope = [tokens * cfg.qk_rope_dim * 4] * cfg.layers
    return g, f, rope, [tokens * 4, 2 * tokens * 4]  # the max, then the two sums


def test_run_refuses_expert_parallelism(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    # before: the ranks ran plain dp with whole experts while the program timed all-to-alls
    from dojo.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(["run", "--model", "moe", "--plan", "dp=2,ep=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'ep' = 2" in err[0] and "simulated only" in err[0]
    assert not list(tmp_path.iterdir())
