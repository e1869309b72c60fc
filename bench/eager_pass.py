"""What an eager pass costs beyond its ops' dispatch (docs/benchmarks.md, twelfth round; a
diagnostic, not a calibration field): the calibration's dispatch stacks
(`eager_stacks._stacks`) timed at two depths. A phase's time over its counted ops is a line:
its slope is an op's dispatch, its intercept what the pass costs whatever its ops (the
forward's module call and loss around its ops, the backward's `backward()` call and
autograd's engine starting its graph task). `calibrate_cpu` divides a two-block stack's
time by its ops, so its per-op figures hold that intercept spread over a dozen ops.

    .venv/bin/python bench/eager_pass.py [--rounds 8]
"""

from __future__ import annotations

import argparse
import statistics

import torch

# Blocks per stack: the calibration's two, and a deeper stack for the slope.
DEPTHS = (2, 8)
Times = dict[str, tuple[float, float]]
Counts = dict[str, tuple[int, int, int, int]]
Stack = tuple[Times, Counts, dict[str, tuple[int, int]]]


def _rest(stack: Stack, name: str, phase: int, pointwise: float, conv_call: float
          ) -> tuple[float, int]:
    """(seconds, ops) of stack `name`'s phase `phase` (0 forward, 1 backward) beyond its
    elementwise ops at `pointwise` s each and its convolutions' own work at `conv_call`."""
    times, counts, convs = stack
    n = counts[name]
    return (times[name][phase] - n[2 + phase] * pointwise - convs[name][phase] * conv_call,
            n[phase] - n[2 + phase])


def per_op_and_pass(shallow: Stack, deep: Stack, conv_call: tuple[float, float]
                    ) -> dict[str, tuple[float, float, float, float]]:
    """Per stack: (s per forward op, s per backward op, s per forward pass, s per backward
    pass) from each stack's fastest (forward, backward) seconds at two depths, with its
    counts (as `eager_stacks.counted_ops`) and convolutions per phase. A phase takes its
    pass's fixed time plus each op's dispatch. The elementwise stack's slope is an
    elementwise op's dispatch; the other stacks' slopes are net of their elementwise ops at
    that figure and of their convolutions' own work per call (`conv_call`, forward and
    backward s), over their other ops. The pass: the shallow stack's time less its ops."""
    pw = tuple((deep[0]["pointwise"][i] - shallow[0]["pointwise"][i])
               / (deep[1]["pointwise"][i] - shallow[1]["pointwise"][i]) for i in (0, 1))
    out = {}
    for name in deep[0]:
        slope, fixed = [pw[0], pw[1]], [0.0, 0.0]
        for i in (0, 1):  # forward, backward
            if name == "pointwise":
                fixed[i] = shallow[0][name][i] - shallow[1][name][i] * pw[i]
                continue
            (r0, o0), (r1, o1) = (_rest(stack, name, i, pw[i], conv_call[i])
                                  for stack in (shallow, deep))
            slope[i] = (r1 - r0) / (o1 - o0)
            fixed[i] = r0 - o0 * slope[i]
        out[name] = (slope[0], slope[1], fixed[0], fixed[1])
    return out


def depth_split(rounds: int = 8, conv_call: tuple[float, float] = (0.0, 0.0)
                ) -> dict[str, tuple[float, float, float, float]]:
    """`per_op_and_pass` of the stacks as timed here: the fastest of `rounds` rounds that
    take turns over the stacks and depths."""
    from eager_stacks import _phase_times, _stacks, counted_ops

    stacks = {d: _stacks(d) for d in DEPTHS}
    raw: dict[int, Times] = {d: {} for d in DEPTHS}
    for _ in range(rounds):
        for d in DEPTHS:
            for name, (model, x) in stacks[d].items():
                fwd, bwd = _phase_times(model, x, 100)
                old = raw[d].get(name, (fwd, bwd))
                raw[d][name] = (min(old[0], fwd), min(old[1], bwd))
    shallow, deep = ((raw[d], {n: counted_ops(m, x) for n, (m, x) in stacks[d].items()},
                      {n: counted_ops(m, x, conv=True)[2:] for n, (m, x) in stacks[d].items()})
                     for d in DEPTHS)
    return per_op_and_pass(shallow, deep, conv_call)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from dojo.sim.costs import load_calibration

    cal = load_calibration("cpu")
    split = depth_split(args.rounds, (cal.conv_call_s, cal.conv_call_backward_s))
    print("| stack | forward op us | backward op us | forward pass us | backward pass us |\n"
          "|---|---|---|---|---|")
    for name, row in split.items():
        print(f"| {name} | " + " | ".join(f"{v * 1e6:.2f}" for v in row) + " |")
    others = [row for name, row in split.items() if name != "pointwise"]
    print(f"\nmedian module op {statistics.median(r[0] for r in others) * 1e6:.2f} / "
          f"{statistics.median(r[1] for r in others) * 1e6:.2f} us (committed, two blocks: "
          f"{cal.launch_s * 1e6:.2f} / {cal.launch_backward_s * 1e6:.2f}); median pass "
          f"{statistics.median(r[2] for r in split.values()) * 1e6:.1f} / "
          f"{statistics.median(r[3] for r in split.values()) * 1e6:.1f} us")


if __name__ == "__main__":
    main()
