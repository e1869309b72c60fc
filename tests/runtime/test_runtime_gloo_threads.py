"""gloo's event loop threads yield the core where a job's ranks fill the machine
(`dojo.runtime.gloothreads`): checked against the kernel's own record of each thread's
scheduling policy, in real gloo processes."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

from dojo.runtime.gloothreads import LOOP_THREAD, fills_cores, idle_loop_threads

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux threads")


def _loop_policies() -> list[int]:
    out = []
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm", encoding="utf-8") as f:
            if f.read().strip() == LOOP_THREAD:
                out.append(os.sched_getscheduler(int(tid)))
    return out


def _rank(rank: int, world: int) -> dict[str, Any]:
    """Policies of this rank's loop threads after the launcher set them, after the mesh made
    its groups, and after asking for the default policy back."""
    import torch

    from dojo.plan.plan import Plan
    from dojo.runtime.mesh import build_mesh

    started = _loop_policies()
    build_mesh(Plan(dp=1, tp=2), rank, distributed=True)
    meshed = _loop_policies()
    back = idle_loop_threads(False)
    torch.distributed.barrier()
    return {"started": started, "meshed": meshed, "back": back, "after": _loop_policies()}


def test_loop_threads_idle_exactly_where_the_ranks_fill_the_cores() -> None:
    """Two gloo ranks: every loop thread (the default group's, and after `build_mesh` the tp
    group's too) runs at SCHED_IDLE when two ranks fill this machine's cores, at the default
    policy otherwise; `idle_loop_threads(False)` puts them all back."""
    from dojo.runtime.launch import launch

    out = launch(_rank, 2, timeout_s=60)
    want = os.SCHED_IDLE if fills_cores(2) else os.SCHED_OTHER
    for r in out:
        assert r["started"] and set(r["started"]) == {want}
        assert len(r["meshed"]) > len(r["started"])  # the tp group brought its own loop
        assert set(r["meshed"]) == {want}
        assert r["back"] == len(r["meshed"]) and set(r["after"]) == {os.SCHED_OTHER}


def test_fills_cores_counts_the_cores_this_process_may_use() -> None:
    """`fills_cores` compares the ranks with the CPUs in this process's affinity mask."""
    cores = len(os.sched_getaffinity(0))
    assert fills_cores(cores) and fills_cores(cores + 1)
    assert not fills_cores(cores - 1) or cores == 1



def test_the_setting_turns_it_off_and_a_bad_value_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`DOJO_GLOO_LOOP=default` leaves the loop threads alone whatever the ranks; an unknown
    value is one `DojoError` naming the variable and the value, before any rank starts."""
    from dojo.errors import DojoError
    from dojo.runtime.gloothreads import wanted
    from dojo.runtime.launch import launch

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("DOJO_GLOO_LOOP", "default")
    assert not wanted(cores)
    monkeypatch.setenv("DOJO_GLOO_LOOP", "idle")
    assert wanted(cores)
    monkeypatch.setenv("DOJO_GLOO_LOOP", "spin")
    with pytest.raises(DojoError, match="DOJO_GLOO_LOOP = 'spin': expected idle or default"):
        launch(_rank, 2, timeout_s=60)


def _policies(rank: int, world: int) -> list[int]:
    return _loop_policies()


def test_a_hosts_ranks_settle_against_that_hosts_rank_count() -> None:
    """`launch_group` (a host's share of a multi-host world, here the whole world of 2 on
    loopback) settles each rank's loop threads by the ranks it runs on this machine: at
    SCHED_IDLE exactly where they fill its cores."""
    import socket

    from dojo.runtime.hosts import launch_group

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = launch_group(_policies, 0, 2, 2, f"tcp://127.0.0.1:{port}", timeout_s=60)
    want = os.SCHED_IDLE if fills_cores(2) else os.SCHED_OTHER
    assert all(r and set(r) == {want} for r in out)
