"""Checkpoint and resume: a run stopped after step 3 and resumed from its checkpoint gives the
same losses as an uninterrupted run (exactly: same data position, RNG, optimizer and policy
state). Saves are write-then-rename with a manifest written last."""

from __future__ import annotations

from pathlib import Path

import pytest

from dojo.errors import DojoError
from dojo.runtime import (
    Job,
    RankError,
    Trainer,
    load_checkpoint,
    run_distributed,
    save_checkpoint,
    simulate_job,
)
from dojo.runtime.job import build_bundle

GPT = {"layers": 4}


def _trainer(job: Job) -> Trainer:
    return Trainer(simulate_job(job).program, build_bundle(job), seed=job.seed)


@pytest.mark.parametrize("precision", ["fp32", "cfp8"])
def test_runtime_resume_gives_uninterrupted_losses(tmp_path: Path, precision: str) -> None:
    job = Job(model="gpt", plan=f"dp=1,mb=1,precision={precision}", batch=2, seq=8,
              overrides=GPT, seed=3)
    whole = _trainer(job)
    expected = [whole.step() for _ in range(6)]
    first = _trainer(job)
    head = [first.step() for _ in range(3)]
    save_checkpoint(first, tmp_path)
    del first  # the run ends here; a fresh process state would start below
    resumed = _trainer(job)
    load_checkpoint(resumed, tmp_path)
    assert resumed.position == 3
    assert head + [resumed.step() for _ in range(3)] == expected


def test_runtime_killed_distributed_run_resumes(tmp_path: Path) -> None:
    base = Job(model="gpt", plan="dp=2,precision=fp32", batch=4, seq=8, overrides=GPT, steps=6)
    _, whole = run_distributed(base)
    ckpt = str(tmp_path / "ckpt")
    killed = Job(**{**base.__dict__, "checkpoint": ckpt, "save_every": 1, "die_at": (1, 3)})
    with pytest.raises(RankError, match="rank 1"):
        run_distributed(killed, timeout_s=10)
    resumed = Job(**{**base.__dict__, "checkpoint": ckpt, "resume": True})
    _, tail = run_distributed(resumed)
    assert tail[0]["losses"] == whole[0]["losses"][3:]


def test_runtime_incomplete_checkpoint_is_refused(tmp_path: Path) -> None:
    job = Job(model="mlp", plan="dp=1,precision=fp32", batch=2)
    trainer = _trainer(job)
    trainer.step()
    save_checkpoint(trainer, tmp_path)
    (tmp_path / "manifest.json").unlink()  # as if killed between the rank files and the manifest
    with pytest.raises(DojoError, match=r"no manifest\.json"):
        load_checkpoint(_trainer(job), tmp_path)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_runtime_resume_refuses_another_models_weights(tmp_path: Path) -> None:
    """A checkpoint of a 4-layer gpt loaded into a 2-layer one (same plan) is refused in one
    line naming the checkpoint and the first tensor the weights lack or add, not torch's
    multi-line RuntimeError."""
    job = Job(model="gpt", plan="dp=1,mb=1", batch=2, seq=8, overrides=GPT, seed=3)
    first = _trainer(job)
    first.step()
    save_checkpoint(first, tmp_path)
    other = _trainer(Job(model="gpt", plan="dp=1,mb=1", batch=2, seq=8,
                         overrides={"layers": 2}, seed=3))
    with pytest.raises(DojoError, match="another model's weights") as err:
        load_checkpoint(other, tmp_path)
    assert "\n" not in str(err.value) and "unexpected" in str(err.value)


def test_runtime_tp_checkpoint_resumes_and_refuses_the_whole_vocabulary_layout(
        tmp_path: Path) -> None:
    """tp=2 (vocabulary-parallel wte: each rank saves its rows) resumes exactly; a checkpoint of
    the layout before it (wte whole on every tp rank) is refused in one line naming wte."""
    import torch

    base = Job(model="gpt", plan="tp=2,precision=fp32", batch=2, seq=8, overrides=GPT, steps=4)
    _, whole = run_distributed(base)
    ckpt = tmp_path / "ckpt"
    first = Job(**{**base.__dict__, "steps": 2, "checkpoint": str(ckpt), "save_every": 1})
    run_distributed(first)
    _, tail = run_distributed(Job(**{**base.__dict__, "checkpoint": str(ckpt), "resume": True}))
    assert tail[0]["losses"] == whole[0]["losses"][2:]
    rows = [torch.load(ckpt / f"rank{r}.pt", weights_only=False)["model"]["wte.weight"]
            for r in range(2)]
    for r in range(2):  # rewrite as the older layout: the whole table on each tp rank
        state = torch.load(ckpt / f"rank{r}.pt", weights_only=False)
        state["model"]["wte.weight"] = torch.cat(rows)
        torch.save(state, ckpt / f"rank{r}.pt")
    with pytest.raises(RankError, match=r"'wte.weight' is \(512, 64\), expected \(256, 64\)"):
        run_distributed(Job(**{**base.__dict__, "checkpoint": str(ckpt), "resume": True}))
