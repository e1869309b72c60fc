"""One host's share of a torch.distributed world that spans hosts.

    results = launch_group(fn, first=2, nproc=2, world=4, init_method="tcp://10.0.0.1:29500",
                           args=(spec,), timeout_s=60)

Where `launch` opens a private TCPStore for ranks of one machine, here every host starts its
local ranks `first .. first+nproc-1` of a `world` with torch.distributed's own rendezvous:
`init_process_group(init_method="tcp://ADDR:PORT")`, whose global rank 0 (on the rendezvous
host) listens at that address. Gloo on CPU; on loopback addresses gloo stays on `lo`.

Contract (as `launch`, plus):
- Ranks start with "spawn" and die with the process that started them (PR_SET_PDEATHSIG), so
  a host killed with -9 leaves no rank of its share running.
- After `fn` returns, every rank waits on a barrier of the whole world before it reports: a
  host's `launch_group` returns only when the ranks of every host have finished `fn`.
- A rank of another host that dies or never arrives makes the local ranks fail within
  `timeout_s` (gloo's "connection closed" at once, or the collective's time-out): `RankError`
  naming the global rank; the local ranks are then terminated.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import pickle
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from dojo.errors import DojoError
from dojo.runtime.gloothreads import setting, settle
from dojo.runtime.launch import (
    START_GRACE_S,
    RankError,
    _collect,
    check_ranks,
    failure_line,
    stop_ranks,
)


def launch_group(fn: Callable[..., Any], first: int, nproc: int, world: int, init_method: str,
                 args: Sequence[Any] = (), *, timeout_s: float = 60.0, threads: int = 1
                 ) -> list[Any]:
    """Run `fn(rank, world, *args)` on global ranks `first .. first+nproc-1` here; returns
    their results in rank order. `timeout_s`: seconds for the rendezvous and each collective."""
    import torch.multiprocessing as mp

    check_ranks(nproc, "launch_group: nproc")
    setting()  # a bad DOJO_GLOO_LOOP is refused here, not in every rank
    if not (first >= 0 and first + nproc <= world):
        raise DojoError(f"launch_group: ranks {first}..{first + nproc - 1} are not in a world "
                        f"of {world}")
    if not 0 < timeout_s < float("inf"):
        raise DojoError(f"launch_group: timeout_s = {timeout_s}: expected a finite number of "
                        "seconds > 0")
    ctx: Any = mp.get_context("spawn")
    results: Any = ctx.Queue()
    procs = [ctx.Process(target=_rank, daemon=True,
                         args=(fn, (i, nproc), first + i, world, init_method, tuple(args),
                               results, timeout_s, threads))
             for i in range(nproc)]
    for p in procs:
        p.start()
    try:
        return _collect(procs, results, nproc, timeout_s * 2 + START_GRACE_S)
    except RankError as err:
        said = str(err).split(": ", 1)[-1]
        raise RankError(first + err.rank, said) from None
    finally:
        stop_ranks(procs)


def _rank(fn: Callable[..., Any], slot: tuple[int, int], rank: int, world: int, init_method: str,
          args: tuple[Any, ...], results: Any, timeout_s: float, threads: int) -> None:
    local, local_ranks = slot  # this rank's index on this host, and the host's rank count
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    import torch

    torch.set_num_threads(threads)
    import torch.distributed as dist

    host = init_method.removeprefix("tcp://").rsplit(":", 1)[0]
    if sys.platform.startswith("linux") and host.startswith(("127.", "localhost")):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    try:
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
        settle(local_ranks)  # `dojo.runtime.gloothreads`: this host's ranks against its cores
        out = fn(rank, world, *args)
        dist.barrier()  # every rank of every host has finished
        results.put((local, True, pickle.dumps(out)))
    except BaseException as err:  # report every failure with this rank's id, then exit
        results.put((local, False, failure_line(err)))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
