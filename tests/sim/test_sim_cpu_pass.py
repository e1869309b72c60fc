"""bench/eager_pass.per_op_and_pass on stack times of a known closed form (twelfth round's
diagnostic): a phase takes its pass's fixed time P plus, per op, an elementwise op's p, a
module op's d, and a convolution's own work c on top of its dispatch; the slope between two
depths recovers p and d, the intercept P."""

from __future__ import annotations

import pytest
from bench_module import load_bench

P, PB, PW, D, C = 30e-6, 55e-6, 2.5e-6, 12e-6, 4e-6


def _stack(blocks: int) -> tuple[dict[str, tuple[float, float]],
                                  dict[str, tuple[int, int, int, int]],
                                  dict[str, tuple[int, int]]]:
    """Times, counts and convolutions of a pointwise stack (7 + 13 per block, all elementwise
    but one fixed op of the loss) and a conv stack (4 + 5 ops per block, 1 + 2 of them
    elementwise, one convolution per phase per block), `blocks` deep."""
    counts = {"pointwise": (1 + 7 * blocks, 1 + 13 * blocks, 7 * blocks, 13 * blocks),
              "conv": (1 + 4 * blocks, 1 + 5 * blocks, blocks, 2 * blocks)}
    convs = {"pointwise": (0, 0), "conv": (blocks, blocks)}
    times = {}
    for name, (nf, nb, pf, pb) in counts.items():
        pw_f = PW * pf if name == "conv" else PW * nf
        pw_b = PW * pb if name == "conv" else PW * nb
        rest_f = D * (nf - pf) + C * convs[name][0] if name == "conv" else 0.0
        rest_b = D * (nb - pb) + C * convs[name][1] if name == "conv" else 0.0
        times[name] = (P + pw_f + rest_f, PB + pw_b + rest_b)
    return times, counts, convs


def test_the_slope_is_the_dispatch_and_the_intercept_the_pass() -> None:
    split = load_bench("eager_pass").per_op_and_pass(_stack(2), _stack(8), (C, C))
    assert split["pointwise"] == pytest.approx((PW, PW, P, PB), rel=1e-9)
    assert split["conv"] == pytest.approx((D, D, P, PB), rel=1e-9)
