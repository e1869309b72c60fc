"""Is one arm better than another? Paired statistics for mining rounds.

Two sources of noise, measured separately:
- held-out sampling: which clips happen to be in the held-out slice. `paired_bootstrap` resamples
  the slice's clips (the same draw for both models, since both were evaluated on the same clips)
  and gives the pooled-IoU difference with its 95 % percentile interval;
- training: which seed initialised the model and ordered its batches. `paired_seeds` takes one
  difference per independent training seed (mined minus random, the same seed for both arms)
  and gives the mean with a Student-t 95 % interval, the two-sided paired t-test p, and the
  exact two-sided sign-flip (permutation) p, which assumes nothing about the differences'
  distribution beyond symmetry under no effect.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from dojo.train.slices import BOOTSTRAP


def pooled(counts: np.ndarray) -> np.ndarray:
    """Pooled IoU of (..., n, 2) [intersection, union] rows over the n axis; 1.0 for no union."""
    inter, union = counts[..., 0].sum(-1), counts[..., 1].sum(-1)
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def paired_bootstrap(before: np.ndarray, after: np.ndarray, seed: int,
                     draws: int = BOOTSTRAP) -> dict[str, Any]:
    """after - before pooled IoU over the same n clips ((n, 2) counts each, rows aligned):
    {delta, ci95: [lo, hi], p}; p is the two-sided bootstrap p (twice the share of resampled
    differences on the far side of 0, at most 1). Only held-out sampling noise is in it."""
    if before.shape != after.shape or before.ndim != 2 or before.shape[1] != 2:
        raise ValueError(f"paired counts must both be (n, 2); got {before.shape}, {after.shape}")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(before), size=(draws, len(before)))  # (draws, n)
    deltas = pooled(after[picks]) - pooled(before[picks])  # (draws,)
    delta = float(pooled(after) - pooled(before))
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    side = np.mean(deltas <= 0) if delta > 0 else np.mean(deltas >= 0)
    return {"delta": delta, "ci95": [float(lo), float(hi)], "p": float(min(1.0, 2 * side))}


def sign_flip_p(diffs: Sequence[float]) -> float:
    """Exact two-sided sign-flip p of the mean of `diffs` (all 2^n sign patterns; n <= 16)."""
    d = np.asarray(diffs, dtype=float)
    if len(d) > 16:
        raise ValueError(f"{len(d)} differences: the exact sign-flip test enumerates 2^n; "
                         "expected at most 16")
    observed = abs(d.mean())
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))  # (2^n, n)
    means = np.abs((signs * d).mean(1))  # (2^n,)
    return float(np.mean(means >= observed - 1e-12))


def paired_seeds(diffs: Sequence[float]) -> dict[str, Any]:
    """One difference per training seed: {n, mean, sd, ci95 (Student t), p_t (two-sided paired
    t-test), p_sign_flip (exact), wins (differences > 0)}."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    n = len(d)
    if n < 2:
        raise ValueError(f"{n} seeds: a spread needs at least 2")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    t = mean / (sd / math.sqrt(n)) if sd > 0 else math.copysign(math.inf, mean)
    p_t = float(2 * stats.t.sf(abs(t), n - 1)) if sd > 0 else 0.0
    return {"n": n, "mean": mean, "sd": sd, "ci95": [mean - half, mean + half], "p_t": p_t,
            "p_sign_flip": sign_flip_p(d.tolist()), "wins": int((d > 0).sum())}
