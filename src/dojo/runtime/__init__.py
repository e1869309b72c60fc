"""Execute compiled programs on real tensors: one process or many over torch.distributed.

- `Trainer(program, bundle)`: runs the `Program` the simulator times (dp, tp, pp, micro-batches,
  the simulator's pipeline task order, sp, zero 1/2, recompute, precision policy from its plan).
- `launch(fn, nproc, args)`: worker processes with a rendezvous on 127.0.0.1, collective
  timeouts, and failures reported by rank.
- `Job` / `run_job`: a whole training run as data, for `dojo run`, tests and benchmarks.
- `save_checkpoint` / `load_checkpoint`: atomic, per-rank, with data position and RNG.
- `dojo.runtime.backend`: the `torch.compile(model, backend="dojo")` backend (imported on demand).
See docs/runtime.md.
"""

from dojo.runtime.checkpoint import load_checkpoint, save_checkpoint
from dojo.runtime.job import Job, dumps_program, run_distributed, run_job, simulate_job
from dojo.runtime.launch import RankError, launch
from dojo.runtime.trainer import Batches, Trainer, check_policy_coverage

__all__ = [
    "Batches",
    "Job",
    "RankError",
    "Trainer",
    "check_policy_coverage",
    "dumps_program",
    "launch",
    "load_checkpoint",
    "run_distributed",
    "run_job",
    "save_checkpoint",
    "simulate_job",
]
