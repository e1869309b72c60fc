"""`dojo run`: train for real over torch.distributed.

    dojo run --model gpt --plan dp=2,tp=2,precision=fp32 --batch 8 --steps 5 [--set layers=4]
    dojo run --nproc 4 train.py [script args]

With `--model`, the plan is simulated once, and that program is executed on dp*tp*pp local
ranks (gloo on CPU): losses, measured and simulated step times are printed. With a script, it is
started `--nproc` times like torchrun (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1,
MASTER_PORT set; OMP_NUM_THREADS=1), and the first rank to fail is named; `--timeout` then limits
the whole job's wall-clock time and names a rank still running when it kills the job.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dojo.cli.common import integer, number, parse_sets, print_json, with_native_precision

MODEL_TIMEOUT_S = 60.0  # collective timeout of --model runs when --timeout is not given


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train for real on local ranks (a zoo model or a script)",
                       description="Execute a plan's compiled program on local worker "
                       "processes, or launch a training script like torchrun. At most "
                       "4 ranks per CPU core (at least 8, at most 64) are started.")
    p.add_argument("script", nargs="?", help="a Python training script to launch --nproc times")
    p.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments for the script")
    p.add_argument("--nproc", type=integer, default=1, help="processes for a script (default 1)")
    p.add_argument("--model", help="zoo model to train (instead of a script)")
    p.add_argument("--plan", default="dp=1,precision=fp32", help="parallel plan, e.g. dp=2,tp=2")
    p.add_argument("--batch", type=integer, default=4, help="global batch in samples")
    p.add_argument("--seq", type=integer, default=None, help="tokens per sample (sequence models)")
    p.add_argument("--steps", type=integer, default=3, help="optimizer steps (>= 1)")
    p.add_argument("--seed", type=integer, default=0)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="model config override")
    p.add_argument("--full", action="store_true", help="the full-size model, not its small preset")
    p.add_argument("--system", default="h100-cluster", help="system to simulate the plan on")
    p.add_argument("--checkpoint", help="checkpoint folder (saved every step; --resume loads it)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--timeout", type=number, default=None,
                   help="seconds: with --model, the collective timeout (default "
                   f"{MODEL_TIMEOUT_S:g}); with a script, the wall-clock limit of the whole job, "
                   "after which every rank is killed (default: none, like torchrun)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dojo.errors import DojoError
    from dojo.runtime.launch import MAX_TIMEOUT_S, TIMEOUT_RANGE, launch_script

    if args.timeout is not None and not 0 < args.timeout <= MAX_TIMEOUT_S:
        raise DojoError(f"--timeout = {args.timeout}: {TIMEOUT_RANGE}")
    if args.model and args.script:
        raise DojoError("dojo run: give a script or --model, not both")
    if args.script:
        _refuse_model_flags(args)
        launch_script(args.script, [a for a in args.script_args if a != "--"], args.nproc,
                      args.timeout)
        return 0
    if not args.model:
        raise DojoError("dojo run: give a script to launch or --model NAME to train")
    check_model_args(args)
    return run_model(args)


# Optimizer steps of one `--model` run: Llama 3 405B's pre-training took about 1.2 M.
MAX_STEPS = 10**7

# Flags that only --model uses, with their defaults: given to a script they would be ignored.
_MODEL_FLAGS = {"plan": "dp=1,precision=fp32", "batch": 4, "seq": None, "steps": 3, "seed": 0,
                "set": None, "full": False, "system": "h100-cluster", "checkpoint": None,
                "resume": False, "json": False}


def _refuse_model_flags(args: argparse.Namespace) -> None:
    """A script launch ignores --plan, --batch...: name the first one given instead."""
    from dojo.errors import DojoError

    for name, default in _MODEL_FLAGS.items():
        if getattr(args, name) != default:
            raise DojoError(f"--{name}: applies to --model only; a script reads its own "
                            f"settings (pass them after the script: dojo run {args.script} ...)")


def check_model_args(args: argparse.Namespace) -> None:
    """Refuse what `--model` would otherwise ignore or start processes for: steps, batch or seq
    < 1, --nproc (the plan decides the ranks), more ranks than this machine allows, --resume
    without --checkpoint, and a checkpoint folder that cannot be written or read."""
    from dojo.errors import ConfigError, DojoError
    from dojo.plan import parse_plan
    from dojo.runtime.launch import check_ranks

    if not 1 <= args.steps <= MAX_STEPS:  # 10^20 ran for ever
        raise DojoError(f"--steps = {args.steps}: expected 1 to {MAX_STEPS:,} optimizer steps")
    if not 0 <= args.seed < 2**63:  # past it every rank failed in torch.manual_seed
        raise DojoError(f"--seed = {args.seed}: expected 0 <= seed < 2^63")
    if args.batch < 1:
        raise DojoError(f"--batch = {args.batch}: expected at least 1 sample")
    if args.seq is not None and args.seq < 1:
        raise DojoError(f"--seq = {args.seq}: expected at least 1 token per sample")
    if args.nproc != 1:
        raise DojoError(f"--nproc = {args.nproc}: applies to scripts only; with --model the "
                        "plan's dp x tp x pp sets the ranks")
    plan = parse_plan(args.plan)
    if plan.cp > 1:
        raise ConfigError("--plan", "cp", plan.cp, "1: `dojo run` executes dp, tp and pp; context "
                          "parallelism is simulated only (dojo simulate)")
    if plan.ep > 1:  # the ranks would run dp with whole experts, not the program's all-to-alls
        raise ConfigError("--plan", "ep", plan.ep, "1: `dojo run` splits the experts over tp "
                          "(etp = tp); expert parallelism is simulated only (dojo simulate)")
    check_ranks(plan.devices, f"--plan {args.plan}: dp x tp x pp")
    _check_system_count(args.system, plan.devices)
    if args.resume and not args.checkpoint:
        raise DojoError("--resume: expected --checkpoint FOLDER to resume from")
    if args.checkpoint is not None:
        from dojo.runtime.checkpoint import check_folder

        check_folder(args.checkpoint, resume=args.resume)


def _check_system_count(system: str, devices: int) -> None:
    """`--system NAME:N` where N is not the plan's device count: the run sizes the system to
    the plan, so N would be refused as a `--devices` the user never gave; name --system."""
    import os

    from dojo.config import ascii_int
    from dojo.errors import ConfigError

    _, sep, count = system.rpartition(":")
    given = ascii_int(count) if sep and not os.path.exists(system) else None
    if given is not None and given >= 1 and given != devices:
        raise ConfigError("--system", "system", system, f"no ':N', or :{devices}: dojo run sizes "
                          f"the system to the plan's dp x tp x pp = {devices} devices")


def run_model(args: argparse.Namespace) -> int:
    from dojo.hardware import load_system
    from dojo.runtime import Job, run_distributed
    from dojo.runtime.job import measured_step_s

    text, note = with_native_precision(args.plan, load_system(args.system))
    if note and not args.json:
        print(f"note: {note}", file=sys.stderr)
    job = Job(model=args.model, plan=text, batch=args.batch, seq=args.seq, steps=args.steps,
              seed=args.seed, small=not args.full, overrides=parse_sets(args.set),
              system=args.system, checkpoint=args.checkpoint, save_every=1 if args.checkpoint
              else 0, resume=args.resume)
    timeout = MODEL_TIMEOUT_S if args.timeout is None else args.timeout
    sim, results = run_distributed(job, timeout_s=timeout)
    first = results[0]
    # The steady state (median after the warm-up step), what the simulator's step models;
    # the CPU seconds beside it are what an idle core would take on a shared machine.
    summary: dict[str, Any] = {
        "model": args.model, "plan": sim.program.plan.text(), "ranks": len(results),
        "losses": first["losses"],
        "step_s_measured": measured_step_s(first),
        "step_s_simulated": sim.result.step_time_s, "system": args.system,
        "threads": first.get("threads"), "step_cpu_s": first.get("step_cpu_s"),
        "notes": [note] if note else [],
    }
    if args.json:
        print_json(summary)
    else:
        for key, value in summary.items():
            print(f"{key:<18} {value}")
    return 0
