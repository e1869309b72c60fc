"""`dojo run`: train for real over torch.distributed.

    dojo run --model gpt --plan dp=2,tp=2,precision=fp32 --batch 8 --steps 5 [--set layers=4]
    dojo run --nproc 4 train.py [script args]

With `--model`, the plan is simulated once, and that program is executed on dp*tp*pp local
ranks (gloo on CPU): losses, measured and simulated step times are printed. With a script, it is
started `--nproc` times like torchrun (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1,
MASTER_PORT set; OMP_NUM_THREADS=1), and the first rank to fail is named.
"""

from __future__ import annotations

import argparse
from typing import Any

from dojo.cli.common import parse_sets, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train for real on local ranks (a zoo model or a script)",
                       description="Execute a plan's compiled program on local worker "
                       "processes, or launch a training script like torchrun.")
    p.add_argument("script", nargs="?", help="a Python training script to launch --nproc times")
    p.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments for the script")
    p.add_argument("--nproc", type=int, default=1, help="processes for a script (default 1)")
    p.add_argument("--model", help="zoo model to train (instead of a script)")
    p.add_argument("--plan", default="dp=1,precision=fp32", help="parallel plan, e.g. dp=2,tp=2")
    p.add_argument("--batch", type=int, default=4, help="global batch in samples")
    p.add_argument("--seq", type=int, default=None, help="tokens per sample (sequence models)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="model config override")
    p.add_argument("--full", action="store_true", help="the full-size model, not its small preset")
    p.add_argument("--system", default="h100-cluster", help="system to simulate the plan on")
    p.add_argument("--checkpoint", help="checkpoint folder (saved every step; --resume loads it)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--timeout", type=float, default=60.0, help="collective timeout, seconds")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dojo.errors import DojoError

    if args.model and args.script:
        raise DojoError("dojo run: give a script or --model, not both")
    if args.script:
        return run_script(args.script, args.script_args, args.nproc, args.timeout)
    if not args.model:
        raise DojoError("dojo run: give a script to launch or --model NAME to train")
    return run_model(args)


def run_model(args: argparse.Namespace) -> int:
    from dojo.runtime import Job, run_distributed

    job = Job(model=args.model, plan=args.plan, batch=args.batch, seq=args.seq, steps=args.steps,
              seed=args.seed, small=not args.full, overrides=parse_sets(args.set),
              system=args.system, checkpoint=args.checkpoint, save_every=1 if args.checkpoint
              else 0, resume=args.resume)
    sim, results = run_distributed(job, timeout_s=args.timeout)
    steps = results[0]["step_s"]
    summary: dict[str, Any] = {
        "model": args.model, "plan": sim.program.plan.text(), "ranks": len(results),
        "losses": results[0]["losses"],
        "step_s_measured": sorted(steps)[len(steps) // 2] if steps else None,
        "step_s_simulated": sim.result.step_time_s, "system": args.system,
    }
    if args.json:
        print_json(summary)
    else:
        for key, value in summary.items():
            print(f"{key:<18} {value}")
    return 0


def run_script(script: str, script_args: list[str], nproc: int, timeout: float) -> int:
    """Start `script` on `nproc` local ranks; the first non-zero exit is a DojoError naming it."""
    import os
    import socket
    import subprocess
    import sys
    import time

    from dojo.errors import DojoError

    if nproc < 1:
        raise DojoError(f"--nproc = {nproc}: expected >= 1")
    if not os.path.isfile(script):
        raise DojoError(f"dojo run: script {script} does not exist")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [a for a in script_args if a != "--"]
    procs = []
    for rank in range(nproc):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, script, *args], env=env))
    try:
        while any(p.poll() is None for p in procs):
            for rank, p in enumerate(procs):
                if p.returncode not in (None, 0):
                    raise DojoError(f"dojo run: rank {rank} of {script} exited with status "
                                    f"{p.returncode}")
            time.sleep(0.1)
        for rank, p in enumerate(procs):
            if p.returncode != 0:
                raise DojoError(f"dojo run: rank {rank} of {script} exited with status "
                                f"{p.returncode}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
    return 0
