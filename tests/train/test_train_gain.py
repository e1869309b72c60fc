"""Paired statistics of the mining rounds against independent computations: scipy's one-sample
t-test, the published t quantile, a sign-flip count done by hand, and a loop-by-loop bootstrap."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from dojo.train.gain import paired_bootstrap, paired_seeds, sign_flip_p
from dojo.train.rounds import vs_previous

T_975_DF7 = 2.364624  # Student t, 97.5th percentile, 7 degrees of freedom (printed tables: 2.365)


def test_paired_seeds_match_the_t_test_and_the_t_table() -> None:
    d = [0.021, 0.030, 0.037, 0.022, 0.011, 0.045, -0.004, 0.026]
    got = paired_seeds(d)
    want = stats.ttest_1samp(d, 0.0)
    assert got["p_t"] == pytest.approx(want.pvalue, rel=1e-9)
    mean, sd = sum(d) / 8, float(np.std(d, ddof=1))
    assert got["mean"] == pytest.approx(mean)
    half = T_975_DF7 * sd / 8 ** 0.5
    assert got["ci95"] == pytest.approx([mean - half, mean + half], abs=1e-6)
    assert got["wins"] == 7 and got["n"] == 8


def test_sign_flip_p_counted_by_hand() -> None:
    # all four positive: only the all-plus and all-minus patterns reach |mean|: 2 of 16
    assert sign_flip_p([0.03, 0.02, 0.04, 0.01]) == pytest.approx(2 / 16)
    # [3, 1, -1] sums to 3; the 8 sign patterns sum to +-5, +-3, +-3, +-1: 6 reach |3|
    assert sign_flip_p([3.0, 1.0, -1.0]) == pytest.approx(6 / 8)
    with pytest.raises(ValueError, match="at most 16"):
        sign_flip_p([1.0] * 17)


def _loop_bootstrap(before: np.ndarray, after: np.ndarray, seed: int, draws: int
                    ) -> list[float]:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(before), size=(draws, len(before)))
    out = []
    for row in picks:
        b = [sum(before[i][0] for i in row), sum(before[i][1] for i in row)]
        a = [sum(after[i][0] for i in row), sum(after[i][1] for i in row)]
        out.append(a[0] / a[1] - b[0] / b[1])
    return out


def test_paired_bootstrap_against_a_loop() -> None:
    before = np.array([[10, 100], [5, 80], [0, 40], [30, 90], [12, 60]])
    after = np.array([[20, 100], [6, 70], [4, 40], [28, 95], [20, 60]])
    got = paired_bootstrap(before, after, seed=3, draws=400)
    assert got["delta"] == pytest.approx(78 / 365 - 57 / 370)  # pooled after - pooled before
    deltas = _loop_bootstrap(before, after, 3, 400)
    assert got["ci95"] == pytest.approx(list(np.percentile(deltas, [2.5, 97.5])))
    assert got["p"] == pytest.approx(min(1.0, 2 * np.mean(np.array(deltas) <= 0)))


def test_a_change_on_every_clip_has_p_zero_and_none_has_a_point_interval() -> None:
    before = np.array([[10, 100], [5, 80], [1, 40]])
    better = before + np.array([5, 0])  # every clip gains 5 cells of intersection
    got = paired_bootstrap(before, better, seed=0)
    assert got["p"] == 0.0 and got["ci95"][0] > 0
    same = paired_bootstrap(before, before.copy(), seed=0)
    assert same == {"delta": 0.0, "ci95": [0.0, 0.0], "p": 1.0}
    with pytest.raises(ValueError, match="both be"):
        paired_bootstrap(before, before[:2], seed=0)


def test_vs_previous_pairs_the_slices_clips_by_name() -> None:
    before = SimpleNamespace(counts={"a": [1, 10], "b": [2, 10], "c": [9, 10]})
    after = SimpleNamespace(counts={"a": [5, 10], "b": [2, 10], "c": [0, 10]})
    got = vs_previous({"ab": ["a", "b"], "c": ["c"], "none": []}, before, after, seed=0)
    assert set(got) == {"ab", "c"}
    assert got["ab"]["delta"] == pytest.approx(7 / 20 - 3 / 20)
    assert got["c"]["delta"] == pytest.approx(-0.9)
    assert got["c"]["ci95"] == pytest.approx([-0.9, -0.9])  # one clip: every resample is it
