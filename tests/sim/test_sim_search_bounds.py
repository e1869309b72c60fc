"""The plan search's memory bounds against the full computation on random small plans: the
activations-in-flight bound of a family (`stagemem.least_in_flight`) below the schedule walk
(`memory.peak_in_flight`) of every micro-batch size, schedule and recompute it stands for."""

from __future__ import annotations

import random

from dojo.sim.memory import peak_in_flight
from dojo.sim.stagemem import least_in_flight


def _saved(split: list[int], sections: tuple[float, float, float]) -> list[float]:
    """Bytes per virtual stage: embedding side on the first, head side on the last."""
    last = len(split) - 1
    return [sections[0] * (v == 0) + sections[1] * n + sections[2] * (v == last)
            for v, n in enumerate(split)]


def test_least_in_flight_is_below_every_schedule_walk() -> None:
    """2,000 random (pp, interleave, split, samples per replica, affine saved bytes): the bound,
    from the least bytes of a micro-batch and of a sample over every mb, stays below the peak
    the walk finds for every mb dividing the samples and every schedule. Saved bytes per
    section are affine in mb (c + k mb, c >= 0 as captures give), the bounds taken as
    `stagemem.saved_lows` does: per micro-batch the value at mb = 1, per sample the slope."""
    rng = random.Random(11)
    tight = 0
    for _ in range(2000):
        pp, interleave = rng.randint(1, 5), rng.randint(1, 3)
        split = [rng.randint(0, 3) for _ in range(pp * interleave)]
        samples = rng.choice([1, 2, 6, 12, 24, 60])
        const = (rng.choice([0.0, 3.0]), rng.uniform(0, 5), rng.uniform(0, 5))
        slope = (rng.uniform(0, 10), rng.uniform(0, 10), rng.uniform(0, 10))
        per_micro = (const[0] + slope[0], const[1] + slope[1], const[2] + slope[2])
        least = least_in_flight(split, pp, interleave, per_micro, slope, samples)
        for mb in (d for d in range(1, samples + 1) if samples % d == 0):
            saved = _saved(split, (const[0] + slope[0] * mb, const[1] + slope[1] * mb,
                                   const[2] + slope[2] * mb))
            micro = samples // mb
            for schedule in ("1f1b", "gpipe"):
                if schedule == "1f1b" and interleave > 1 and micro % pp:
                    continue   # `validate_plan` refuses it
                for s in range(pp):
                    peak = peak_in_flight(schedule, s, pp, micro, interleave, saved)
                    assert least[s] <= peak * (1 + 1e-12) + 1e-9, (pp, interleave, split, mb, s)
                    tight += least[s] > 0.99 * peak > 0
    assert tight > 100   # the bound is reached, not only below
