"""Gloo's transport threads yield their core to the ranks' own threads.

Each gloo device runs an event loop thread (`gloo_tcp_loop`) that, while a transfer is under
way, returns from `epoll_wait` over and over: it holds a core. Where a job's ranks fill the
machine's cores (two ranks on two cores), a rank's thread woken by its collective then waits
for the scheduler to take that core back, one time slice (~3-4 ms under Linux's EEVDF), on
12-30 % of 16 KB all-reduces on the development VM (bench/gloo_stalls.py, docs/benchmarks.md,
fourteenth round: mean all-reduce 1.47 ms, median 0.52 ms, 30 % over 1.5 ms; with the loop
threads at `SCHED_IDLE`, 0.41 ms, 0.40 ms, 0.1 %). At `SCHED_IDLE` the loop still runs
whenever its core is otherwise idle (a rank blocked on its collective leaves it so), and a
woken rank thread preempts it at once. `DOJO_GLOO_LOOP=default` leaves the loop threads as
gloo starts them (a machine whose cores other jobs keep busy would starve an idle-policy
thread).
"""

from __future__ import annotations

import os
import sys

from dojo.errors import DojoError

LOOP_THREAD = "gloo_tcp_loop"
ENV = "DOJO_GLOO_LOOP"  # "idle" (default where the ranks fill the cores) or "default"


def _threads() -> list[tuple[int, str]]:
    """(thread id, name) of this process's threads; empty where /proc is not there."""
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return []
    out = []
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/comm", encoding="utf-8") as f:
                out.append((int(tid), f.read().strip()))
        except (OSError, ValueError):  # the thread ended while we looked
            continue
    return out


def idle_loop_threads(idle: bool = True) -> int:
    """Put every gloo event loop thread of this process at `SCHED_IDLE` (with `idle` False:
    back at the default `SCHED_OTHER`); returns how many are at it now. Linux only (0
    elsewhere); a thread that ends meanwhile is skipped. Call it after the process groups
    exist: each group's device starts its own loop."""
    if not sys.platform.startswith("linux") or not hasattr(os, "SCHED_IDLE"):
        return 0
    policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
    count = 0
    for tid, name in _threads():
        if name != LOOP_THREAD:
            continue
        try:
            os.sched_setscheduler(tid, policy, os.sched_param(0))
            count += 1
        except OSError:
            continue
    return count


def fills_cores(world: int) -> bool:
    """Whether `world` ranks on this machine leave no core free for gloo's loop threads (the
    ranks' stepping threads alone take every core this process may run on)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return world >= cores


def setting() -> str:
    """`DOJO_GLOO_LOOP` ("idle" when unset); anything but "idle" or "default" is a
    `DojoError` naming the variable and its value."""
    value = os.environ.get(ENV, "idle")
    if value not in ("idle", "default"):
        raise DojoError(f"environment variable {ENV} = {value!r}: expected idle or default")
    return value


def wanted(world: int) -> bool:
    """Whether a job of `world` local gloo ranks puts its loop threads at SCHED_IDLE: where
    the ranks fill the cores (`fills_cores`), unless `DOJO_GLOO_LOOP` is "default"."""
    return setting() == "idle" and fills_cores(world)


_idle = False  # this process's launcher chose SCHED_IDLE (`settle`)


def settle(local_ranks: int) -> bool:
    """A launcher's call in each rank right after `init_process_group`, with the ranks this
    machine runs of the job: puts the loop threads at SCHED_IDLE where `wanted`, and records
    the choice for the groups made later (`follow`). Returns the choice."""
    global _idle
    _idle = wanted(local_ranks)
    if _idle:
        idle_loop_threads()
    return _idle


def follow() -> int:
    """After new process groups (each starts its own loop thread): apply the launcher's choice
    to them; returns how many loop threads are now at SCHED_IDLE (0 where none was chosen, or
    no launcher of dojo's started this process)."""
    return idle_loop_threads() if _idle else 0
