"""Occupancy jobs simulate the large preset on their allocated tiles, not the whole system
(issue 12 item 3): a 2-tile job of a V1 server reports the 2-tile step, as `simulate_large`
gives it for the partition built directly, not the step of all 6 tiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import dojo.train.run as run
from dojo.compiler.mapping import device_count
from dojo.hardware import load_system
from dojo.service import worker
from dojo.service.mesh import Machine, Rect
from dojo.service.specs import Invalid, admit, partition_system
from dojo.train.decode import large_rate
from dojo.train.simulated import large_config, simulate_large

V1 = Machine(2, 3, "v1")
JOB = {"id": "j1", "kind": "occupancy", "run": "r1", "system": "v1", "tiles": 2,
       "rect": [1, 1, 1, 2], "spec": {"steps": 1, "clips": 2, "batch": 1}}


class _Simulated(Exception):
    pass


def _direct(system: Any) -> float:
    """The large preset's simulated Dojo step (s), called here, not through the job."""
    cfg = large_config()
    fps = large_rate((cfg.width, cfg.height), False).frames_per_s
    return simulate_large(system, "auto", "fp32", fps).dojo.result.step_time_s


def test_occupancy_job_simulates_on_its_partition(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The job's simulation gets its 1 x 2 partition (2 tiles of 25 D1 dies each, the published
    training tile), and its step equals an independent `simulate_large` on that partition; training
    is cut off after the simulation to keep this fast (the slow test below runs it whole)."""
    seen: list[Any] = []

    def record(system: Any, *args: Any, **kw: Any) -> Any:
        seen.append((system, simulate_large(system, *args, **kw)))
        raise _Simulated

    monkeypatch.setattr(run, "simulate_large", record)
    with pytest.raises(_Simulated):
        worker.run_occupancy(dict(JOB), tmp_path)
    [(spec, sim)] = seen
    assert device_count(spec) == 2 * 25 and device_count(load_system("v1")) == 6 * 25
    assert sim.dojo.program.system.name == "v1-1x2"
    expected = _direct(partition_system(load_system("v1"), Rect(0, 0, 1, 2)))
    assert sim.dojo.result.step_time_s == pytest.approx(expected, rel=1e-9)


def test_occupancy_jobs_default_to_two_tiles_and_refuse_one() -> None:
    """A lone tile has no DIP HBM, so the large preset cannot be simulated on it."""
    assert admit({"kind": "occupancy"}, V1).tiles == 2
    assert admit({"kind": "occupancy", "tiles": 4}, V1).tiles == 4
    with pytest.raises(Invalid) as err:
        admit({"kind": "occupancy", "tiles": 1}, V1)
    assert err.value.lines[0].startswith("tiles = 1: expected 2 or more for occupancy")
    assert admit({"kind": "simulate", "model": "mlp"}, V1).tiles == 1  # others unchanged


@pytest.mark.slow
def test_occupancy_job_result_is_the_partition_step(tmp_path: Path) -> None:
    """A whole tiny job on 2 tiles reports the 2-tile step, which differs from all 6 tiles'."""
    result = worker.run_occupancy(dict(JOB), tmp_path)
    assert result is not None and result["system"] == "v1-1x2"
    part = _direct(partition_system(load_system("v1"), Rect(0, 0, 1, 2)))
    whole = _direct("v1")
    assert result["step_time_s"] == pytest.approx(part, rel=1e-9)
    assert abs(part - whole) > 0.05 * whole
