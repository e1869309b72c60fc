"""Start `nproc` worker processes on this machine and run a function in each over torch.distributed.

    results = launch(worker_fn, nproc=4, args=(spec,), timeout_s=30)

Contract:
- Workers are started with the "forkserver" method (default; torch is imported once in the
  server, each worker is a cheap fork of it) or "spawn". Neither forks a parent that may hold
  running OpenMP threads, and each worker calls `torch.set_num_threads(threads)` before anything
  else, so N workers on a 2-core machine cannot oversubscribe or deadlock on a thread pool.
- The rendezvous is a TCPStore that this process opens on 127.0.0.1 with an OS-chosen port (no
  port race); the backend is gloo on CPU, NCCL when every worker has a GPU of its own.
- Collectives time out after `timeout_s` seconds, so a rank that dies makes the others fail
  instead of hanging. The first failure is raised here as `RankError` naming the rank; the
  remaining workers are terminated. `launch` never waits longer than `timeout_s` plus start-up.
- At most `max_ranks()` processes (4 per CPU core, between 8 and 64): more is refused, not
  started, since every rank is a whole PyTorch process.
- `fn(rank, world, *args)` must be importable (module level) and return a picklable value;
  results come back as a list indexed by rank.
"""

from __future__ import annotations

import datetime
import os
import pickle
import queue
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from dojo.errors import DojoError
from dojo.runtime.gloothreads import setting, settle

START_METHODS = ("forkserver", "spawn")
START_GRACE_S = 60.0  # importing torch in a fresh worker on a loaded 2-core machine
RANKS_PER_CORE = 4  # ranks are single-threaded; beyond a few per core they only wait on each other
MIN_RANK_LIMIT = 8  # dp=2,tp=2,pp=2 must run on any machine, however small
MAX_RANK_LIMIT = 64  # each rank is a whole PyTorch process (~300 MB); 64 of them is ~20 GB


def max_ranks() -> int:
    """The most local ranks `launch` (and `dojo run`) starts on this machine:
    4 per CPU core, at least 8 and at most 64."""
    cores = os.cpu_count() or 1
    return max(MIN_RANK_LIMIT, min(MAX_RANK_LIMIT, RANKS_PER_CORE * cores))


def check_ranks(nproc: int, what: str) -> None:
    """DojoError unless 1 <= `nproc` <= `max_ranks()`; `what` names the flag or plan field."""
    limit = max_ranks()
    if not 1 <= nproc <= limit:
        raise DojoError(f"{what} = {nproc}: expected 1 to {limit} local ranks (4 per CPU core of "
                        f"this machine's {os.cpu_count() or 1}, at least {MIN_RANK_LIMIT}, at "
                        f"most {MAX_RANK_LIMIT}: each rank is a whole PyTorch process)")


class RankError(DojoError):
    """A worker rank failed: `rank` names it, the message carries its one-line error."""

    def __init__(self, rank: int, message: str) -> None:
        self.rank = rank
        super().__init__(f"rank {rank}: {message}")


# The longest timeout a launch takes: a year is past any run here, and stays within what
# `datetime.timedelta` and the rendezvous store's milliseconds hold (1e308 s overflowed them).
MAX_TIMEOUT_S = 365 * 86400.0
TIMEOUT_RANGE = f"expected a number of seconds > 0, at most {MAX_TIMEOUT_S:.0f} (a year)"


def launch(fn: Callable[..., Any], nproc: int, args: Sequence[Any] = (), *,
           timeout_s: float = 30.0, method: str = "forkserver", threads: int = 1,
           backend: str | None = None) -> list[Any]:
    """Run `fn(rank, nproc, *args)` in `nproc` processes; returns their results by rank."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    check_ranks(nproc, "launch: nproc")
    setting()  # a bad DOJO_GLOO_LOOP is refused here, not in every rank
    if not 0 < timeout_s <= MAX_TIMEOUT_S:  # 1e308 overflowed timedelta in the store
        raise DojoError(f"launch: timeout_s = {timeout_s}: {TIMEOUT_RANGE}")
    if method not in START_METHODS:
        raise DojoError(f"launch: method = {method!r}: expected one of {', '.join(START_METHODS)}")
    ctx: Any = mp.get_context(method)
    if method == "forkserver":
        # torch._dynamo: the first optimizer constructed imports it (seconds); do it once here.
        ctx.set_forkserver_preload(["torch", "torch._dynamo", "dojo.runtime.job",
                                    "dojo.runtime.trainer", "dojo.runtime.checkpoint"])
    store = dist.TCPStore("127.0.0.1", 0, nproc + 1, is_master=True,
                          timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=False)
    results: Any = ctx.Queue()
    procs = [ctx.Process(target=_worker, daemon=True,
                         args=(fn, rank, nproc, store.port, tuple(args), results, timeout_s,
                               threads, backend))
             for rank in range(nproc)]
    for p in procs:
        p.start()
    try:
        return _collect(procs, results, nproc, timeout_s + START_GRACE_S)
    finally:
        stop_ranks(procs)
        del store


def stop_ranks(procs: list[Any]) -> None:
    """Terminate the rank processes still alive and reap every one (5 s each at most)."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)


def _collect(procs: list[Any], results: Any, nproc: int, limit_s: float) -> list[Any]:
    out: dict[int, Any] = {}
    deadline = time.monotonic() + limit_s
    while len(out) < nproc:
        try:
            rank, ok, payload = results.get(timeout=0.2)
        except queue.Empty:
            for rank, p in enumerate(procs):
                # exit code 0: it returned; its result is still in the pipe
                if rank not in out and p.exitcode not in (None, 0):
                    code, said = p.exitcode, _drain_errors(results)
                    if rank in said:  # it raised, reported, then exited: its own words
                        raise RankError(rank, said[rank]) from None
                    then = "".join(f" (then rank {r}: {m})" for r, m in sorted(said.items()))
                    raise RankError(rank, f"worker process died with exit code {code} "
                                          f"before returning a result{then}") from None
            if time.monotonic() > deadline:
                missing = [r for r in range(nproc) if r not in out]
                raise RankError(missing[0], f"no result after {limit_s:.0f} s "
                                            f"(ranks without result: {missing})") from None
            continue
        if not ok:
            _raise_root_cause(procs, out, rank, payload)
        out[rank] = pickle.loads(payload)
    return [out[r] for r in range(nproc)]


def _raise_root_cause(procs: list[Any], done: dict[int, Any], rank: int, message: str,
                      settle_s: float = 15.0) -> None:
    """A rank failed. If another rank died without a word, that death is the cause (gloo tells
    the survivors "connection closed" at once): name the dead rank, then the reporting one.

    The other ranks are given until they have all exited (at most `settle_s`) to show their exit
    codes: a forkserver child's death reaches the parent with a delay that grows with load, so a
    fixed short wait could blame the survivor."""
    deadline = time.monotonic() + settle_s
    while True:
        # One reading of each exit code per pass: reading it twice could see a death only on
        # the second reading and blame the survivor.
        codes = {r: p.exitcode for r, p in enumerate(procs) if r != rank and r not in done}
        for other, code in codes.items():
            if code not in (None, 0):
                raise RankError(other, f"worker process died with exit code {code} "
                                       f"(then rank {rank}: {message})")
        if all(c is not None for c in codes.values()) or time.monotonic() > deadline:
            raise RankError(rank, message)
        time.sleep(0.05)


def _drain_errors(results: Any) -> dict[int, str]:
    """The error reports still queued, by rank (a rank that raised reports before it exits)."""
    said: dict[int, str] = {}
    try:
        while True:
            rank, ok, payload = results.get(timeout=0.5)
            if not ok:
                said.setdefault(rank, payload)
    except queue.Empty:
        return said


def _worker(fn: Callable[..., Any], rank: int, world: int, port: int, args: tuple[Any, ...],
            results: Any, timeout_s: float, threads: int, backend: str | None) -> None:
    import torch

    torch.set_num_threads(threads)  # first: before any op can start a thread pool
    import torch.distributed as dist

    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # rendezvous stays on 127.0.0.1
    try:
        store = dist.TCPStore("127.0.0.1", port, world + 1, is_master=False,
                              timeout=datetime.timedelta(seconds=timeout_s))
        chosen = backend or _default_backend(world)
        if chosen == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(chosen, store=store, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
        if chosen == "gloo":
            settle(world)  # the default group's loop; `build_mesh` follows for its groups'
        # Plain pickle to bytes: tensors must not travel as shared-memory handles, which die
        # with this process before the parent reads them.
        results.put((rank, True, pickle.dumps(fn(rank, world, *args))))
    except BaseException as err:  # report every failure with this rank's id, then exit
        results.put((rank, False, failure_line(err)))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def failure_line(err: BaseException) -> str:
    """One line for a rank's failure: type, message (whitespace folded, at most 2,000
    characters) and the file and line it was raised at."""
    where = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    at = f" (at {os.path.basename(where.filename)}:{where.lineno})" if where else ""
    message = " ".join(f"{type(err).__name__}: {err}".split())
    return message[:2000] + at


def _default_backend(world: int) -> str:
    import torch

    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world else "gloo"


def launch_script(script: str, script_args: Sequence[str], nproc: int,
                  timeout_s: float | None = None, poll_s: float = 0.1) -> None:
    """Start `python script` on `nproc` local ranks like torchrun; return when all exit 0.

    Each rank gets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1, a free
    MASTER_PORT and OMP_NUM_THREADS=1. The first rank to exit non-zero is a DojoError naming it;
    with `timeout_s` (seconds, wall clock), ranks still running then are killed and the first of
    them is named (a rank that never reaches its collective cannot hang the launcher).
    """
    import socket
    import subprocess

    check_ranks(nproc, "--nproc")
    if timeout_s is not None and not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise DojoError(f"--timeout = {timeout_s}: {TIMEOUT_RANGE}")
    if not os.path.isfile(script):
        raise DojoError(f"dojo run: script {script} does not exist (or is not a file)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(nproc):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, script, *script_args], env=env))
    try:
        _watch_scripts(procs, script, timeout_s, poll_s)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()


def _watch_scripts(procs: list[Any], script: str, timeout_s: float | None, poll_s: float) -> None:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        codes = [p.poll() for p in procs]
        for rank, code in enumerate(codes):
            if code not in (None, 0):
                raise DojoError(f"dojo run: rank {rank} of {script} exited with status {code}")
        if all(code == 0 for code in codes):
            return
        if deadline is not None and time.monotonic() > deadline:
            running = [r for r, code in enumerate(codes) if code is None]
            raise DojoError(f"dojo run: rank {running[0]} of {script} still running after "
                            f"--timeout {timeout_s:g} s (ranks still running: {running}); "
                            "job killed")
        time.sleep(poll_s)
