"""What `dojo train occupancy` does, as one typed, self-checking config, and what it reports back.

The defaults are the `make run` demo: a synthetic set of 32 training and 8 held-out clips
(6 cameras, 8 frames of 96 x 64), about two minutes of training on two CPU cores, and the large
preset simulated on a Dojo V1 matrix beside H100s of the same power.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dojo.config import check
from dojo.data.layout import POLICIES

PRECISIONS = ("fp32", "bf16", "cfp8")


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """Settings of one training run; steps and intervals count optimizer steps.

    `data` is a folder holding `train/` and `val/` clip sets ("" means OUT/../data). Missing
    sets are synthesized with `train_clips` / `val_clips` clips (seeds `seed` and `seed + 1`,
    so no held-out scene is seen in training) in the default folder, or in `data` only with
    `synth` (a mistyped `--data` is an error, not a new data set). `measure_decode` measures
    the decode rates on this machine instead of using the recorded calibration
    (`dojo.data.decodecal`), which makes the simulated figures vary with the machine's load.
    `threads` is torch's CPU thread count for training: its kernels split reductions by it, so
    losses differ in the last bits with another count (2, the demo machine's cores, by default,
    so metrics.json is the same on every machine).
    """

    out: str = "runs/demo"
    data: str = ""
    system: str = "v1"
    plan: str = "auto"
    precision: str = field(default="fp32", metadata=check(choices=PRECISIONS))
    # At most 10^7 steps (Llama 3 405B's pre-training took about 1.2 M): 10^20 ran for ever.
    steps: int = field(default=600, metadata=check(gt=0, le=10**7))
    batch_size: int = field(default=4, metadata=check(gt=0))
    lr: float = field(default=3e-3, metadata=check(gt=0))
    warmup: int = field(default=20, metadata=check(ge=0))
    channels: int = field(default=32, metadata=check(ge=2))
    window: int = field(default=4, metadata=check(gt=0, unit="frames"))
    seed: int = field(default=0, metadata=check(ge=0, le=2**63 - 1))  # what torch's seed holds
    eval_every: int = field(default=50, metadata=check(gt=0))
    checkpoint_every: int = field(default=50, metadata=check(gt=0))
    train_clips: int = field(default=32, metadata=check(gt=0))
    val_clips: int = field(default=16, metadata=check(gt=0))
    policy: str = field(default="skip", metadata=check(choices=POLICIES))
    resume: bool = False
    synth: bool = False
    measure_decode: bool = False
    threads: int = field(default=2, metadata=check(gt=0, le=1024))
    slices: str = ""  # slices file for evaluation by slice ("": one slice per tag value)
    rounds: int = field(default=1, metadata=check(ge=1, le=20))  # mining rounds (`rounds`)
    budget: int = field(default=8, metadata=check(ge=1, le=100_000))  # clips mined per round
    pool_clips: int = field(default=64, metadata=check(ge=1, le=100_000))  # synthesized pool
    # how later rounds choose pool clips: "score" (`dojo.train.mine`) or "random" (the control:
    # the same budget drawn uniformly from the unused pool clips, seed + round)
    mine_by: str = field(default="score", metadata=check(choices=("score", "random")))
    train_set: str = ""  # a clip set folder or a dataset version ID (of `catalog`) to train on
    catalog: str = ""  # catalog holding the `train_set` version ("": OUT/catalog)

    def settings(self) -> dict[str, object]:
        """What a checkpoint must share with a run that resumes it."""
        keep = ("precision", "steps", "batch_size", "lr", "warmup", "channels", "window", "seed",
                "eval_every")
        return {k: getattr(self, k) for k in keep}


@dataclass(frozen=True)
class Progress:
    """One progress event for the caller to render: `phase` is "data", "train", "eval",
    "simulate" or "report"; train events carry the step, loss, samples/s and ETA (seconds)."""

    phase: str
    message: str = ""
    step: int = 0
    steps: int = 0
    loss: float = math.nan
    samples_per_s: float = 0.0
    eta_s: float = 0.0

