"""A tp rank's vocabulary-parallel embedding and cross entropy on the eager cpu device
(issue 14 item 4, twelfth round): the runtime runs masks, offsets and an autograd function of
a dozen small ops where the program captures one lookup and one fused loss, so each costs its
measured host time per micro-batch (`tp_vocab_embedding_s` on the first chunk,
`tp_vocab_loss_s` on the last) in place of the f/g regions of its collectives
(`dojo.sim.eager.vocab_host`, docs/simulator.md). Expected values are the closed form from the
calibration's fields; the collective counts are counted on the runtime's own modules."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from dojo.runtime import Job
from dojo.runtime.job import simulate_job

EMB, LOSS, REGION = 70e-6, 150e-6, 20e-6
HOST = {"tp_region_s": REGION, "tp_vocab_embedding_s": EMB, "tp_vocab_loss_s": LOSS,
        "p2p_post_s": 0.0, "wait_resume_s": 0.0, "lockstep_wait_s": 0.0, "lockstep_jitter": 0.0}


def _host(model: str, plan: str) -> list[tuple[int, int, float, float]]:
    """Per chunk of `model`'s small preset under `plan`: (forward collectives, backward
    collectives, forward host s, backward host s) beyond the transfers, with `HOST`'s figures
    and no waits."""
    from dojo.sim.memory import device_memory
    from dojo.sim.simulate import chunk_times, device_model

    program = simulate_job(Job(model=model, plan=f"{plan},precision=fp32",
                               system="cpu")).program
    dev = device_model(program)
    cal = replace(dev.calibration, **HOST)
    none = replace(cal, **{k: 0.0 for k in HOST})
    memory = device_memory(program)
    out = []
    for chunk in program.chunks:
        now = chunk_times(program, chunk, replace(dev, calibration=cal), memory)
        base = chunk_times(program, chunk, replace(dev, calibration=none), memory)
        out.append((len(chunk.tp_forward), len(chunk.tp_backward),
                    now.tp_forward - base.tp_forward, now.tp_backward - base.tp_backward))
    return out


@pytest.mark.parametrize("model", ["gpt", "llama"])
def test_the_vocabulary_parallel_parts_cost_their_own_host_time(model: str) -> None:
    """One chunk (tp=2): forward (n - 3) regions + embedding + loss, backward n regions."""
    (fwd, bwd, f, b), = _host(model, "tp=2")
    assert f == pytest.approx((fwd - 3) * REGION + EMB + LOSS, rel=1e-9)
    assert b == pytest.approx(bwd * REGION, rel=1e-9)


def test_the_embedding_is_charged_on_the_first_stage_and_the_loss_on_the_last() -> None:
    """pp=2, tp=2: stage 0's forward (n - 1) regions + embedding, stage 1's (n - 2) + loss."""
    (f0, _, h0, _), (f1, _, h1, _) = _host("gpt", "tp=2,pp=2")
    assert h0 == pytest.approx((f0 - 1) * REGION + EMB, rel=1e-9)
    assert h1 == pytest.approx((f1 - 2) * REGION + LOSS, rel=1e-9)


def test_a_model_without_a_vocabulary_pays_regions_only() -> None:
    """vit-b16's tp splits no vocabulary (its head is a class head): n regions per phase."""
    for fwd, bwd, f, b in _host("vit-b16", "tp=2"):
        assert (f, b) == pytest.approx((fwd * REGION, bwd * REGION), rel=1e-9)


def test_the_runtime_issues_the_collectives_counted_for_each_part(monkeypatch: Any) -> None:
    """`VOCAB_COMMS` against the runtime: the vocabulary-parallel embedding's forward issues
    one all-reduce, the cross entropy's two, and their backwards none."""
    import torch.distributed as dist

    from dojo.runtime.vocab_parallel import VocabParallelEmbedding, vocab_parallel_loss
    from dojo.sim.eager import VOCAB_COMMS

    calls: list[str] = []
    monkeypatch.setattr(dist, "all_reduce", lambda *a, **k: calls.append("x"))
    emb = VocabParallelEmbedding(torch.nn.Embedding(16, 8), 0, 8, object(), sp=False)
    tokens = torch.randint(0, 16, (1, 8))
    out = emb(tokens)
    assert len(calls) == VOCAB_COMMS["embedding"]
    out.sum().backward()
    logits = torch.randn(1, 8, 8, requires_grad=True)
    loss = vocab_parallel_loss(0, object())(logits, tokens)
    assert len(calls) == VOCAB_COMMS["embedding"] + VOCAB_COMMS["loss"]
    loss.backward()
    assert len(calls) == 3
