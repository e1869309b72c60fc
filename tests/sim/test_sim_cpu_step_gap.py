"""The CPU closed loop's step-against-phases evidence (bench/step_gap.py): the statistic that
separates a whole step's own cost from the noise of its phases, and the split it times."""

from __future__ import annotations

from typing import Any

import pytest
from bench_module import load_bench


def _step_gap() -> Any:
    return load_bench("step_gap")


def test_repaired_minimum_of_two_coin_phases_is_one_half() -> None:
    """Two phases of two rounds each, times {0, 1}: re-paired at random, the rounds are (0+0,
    1+1) or (0+1, 1+0) with equal chance, so the fastest step is 0 or 1: 1/2 expected."""
    repaired = _step_gap().repaired_minimum({"a": [0.0, 1.0], "b": [0.0, 1.0]}, draws=4000)
    assert repaired == pytest.approx(0.5, abs=0.03)  # 4000 draws: sd 0.008


def test_repaired_minimum_with_one_noisy_phase_is_its_minimum_plus_the_rest() -> None:
    """When only one phase varies, every pairing's fastest step is that phase's minimum plus the
    other phases' (constant) times: the sum of the phases' minima, exactly."""
    phases = {"zero_grad": [1.0] * 5, "forward 0": [3.0, 2.5, 4.0, 2.0, 3.5],
              "optimizer": [0.5] * 5}
    assert _step_gap().repaired_minimum(phases) == pytest.approx(1.0 + 2.0 + 0.5, rel=1e-12)


def test_interleaved_times_the_runtimes_step_and_its_phases() -> None:
    """mlp's small preset at dp=1, 3 rounds: A's and B's steps each round; B's phases are the
    runtime's (zero_grad, 4 micro-batches' forward and backward, the optimizer) and, nested
    inside B's step, sum to no more than it."""
    e = _step_gap().interleaved("mlp", rounds=3)
    names = ["zero_grad"] + [f"{p} {i}" for i in range(4) for p in ("forward", "backward")]
    assert list(e["phases"]) == names + ["optimizer"]
    assert len(e["whole"]) == len(e["phased"]) == 3
    for r, step in enumerate(e["phased"]):
        assert sum(v[r] for v in e["phases"].values()) <= step
    assert e["simulated"] > 0
