"""bench/steal.py: the hypervisor's share of the CPU time, read from /proc/stat's `steal`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bench_module import load_bench

# user nice system idle iowait irq softirq steal guest guest_nice, per the proc(5) man page
BEFORE = "cpu  1000 0 200 5000 10 0 20 300 400 0\ncpu0 500 0 100 2500 5 0 10 150 200 0\n"
AFTER = "cpu  1600 0 300 5300 10 0 40 450 900 0\ncpu0 800 0 150 2650 5 0 20 225 450 0\n"


def test_the_stolen_share_counts_steal_against_the_time_up_to_it(
        tmp_path: Path, monkeypatch: Any) -> None:
    """Between the readings: 150 jiffies stolen of 600 + 100 + 300 + 20 + 150 = 1,170 (guest
    time is inside user's, so it is not added again)."""
    steal = load_bench("steal")
    stat = tmp_path / "stat"
    monkeypatch.setattr(steal, "STAT", stat)
    stat.write_text(BEFORE)
    before = steal.cpu_times()
    stat.write_text(AFTER)
    after = steal.cpu_times()
    assert before == (300, 1000 + 200 + 5000 + 10 + 20 + 300)
    assert steal.steal_share(before, after) == pytest.approx(150 / 1170, rel=1e-12)


def test_no_reading_gives_no_share(tmp_path: Path, monkeypatch: Any) -> None:
    steal = load_bench("steal")
    monkeypatch.setattr(steal, "STAT", tmp_path / "absent")
    assert steal.cpu_times() is None
    assert steal.steal_share(None, (1, 2)) is None
    assert steal.steal_share((1, 10), (1, 10)) is None  # no time passed
