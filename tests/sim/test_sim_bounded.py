"""Work bounded by the problem's structure, not by the numbers a user types (issue 14 items 5
and 6): the pipeline's periodic steady state, the in-flight memory walk, absurd batches."""

from __future__ import annotations

import json
import random
import signal
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from dojo.cli.main import main
from dojo.errors import ConfigError, DojoError
from dojo.hardware import load_system
from dojo.plan import parse_plan
from dojo.sim.memory import peak_in_flight
from dojo.sim.pipeline import order, simulate_pipeline
from dojo.sim.search import best_plan
from dojo.sim.session import simulate_model

TINY = {"layers": 2, "hidden": 64, "heads": 4, "ffn": 256, "seq": 64, "vocab": 512}


@pytest.fixture
def deadline() -> Iterator[None]:
    """Fail, rather than hang, when a run is not bounded (the old code grew until killed)."""
    def expire(*_: object) -> None:
        raise TimeoutError("unbounded: still running after 120 s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize(("pp", "virtual"), [(1, 1), (2, 1), (3, 1), (4, 1), (2, 2), (4, 2),
                                               (3, 3)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jumping_the_steady_state_equals_the_direct_simulation(pp: int, virtual: int,
                                                               seed: int) -> None:
    """Unequal chunk times and transfers (so some steady states repeat only every 2 or more
    micro-batches): for every micro-batch count up to 64 the run that jumps over repeated
    periods ends every device's last backward when the task-by-task run does."""
    rng = random.Random(seed * 100 + pp * 10 + virtual)
    f = [rng.choice([1.0, rng.uniform(0.3, 2.0)]) for _ in range(pp * virtual)]
    b = [rng.choice([2.0, rng.uniform(0.5, 4.0)]) for _ in range(pp * virtual)]
    transfer = rng.choice([0.0, 0.07, rng.uniform(0.0, 2.0)])
    schedule = "1f1b" if virtual == 1 else "interleaved"

    def duration(stage: int, task: tuple[str, int, int]) -> float:
        return (f if task[0] == "F" else b)[task[2] * pp + stage]

    step = pp if virtual > 1 else 1
    jumped = 0
    for m in range(step, 65, step):
        direct, none = simulate_pipeline(pp, virtual, m, schedule, duration, transfer,
                                         explicit=10**9)
        fast, skipped = simulate_pipeline(pp, virtual, m, schedule, duration, transfer,
                                          explicit=0)
        assert none == 0 and len(direct) == 2 * pp * virtual * m
        assert len(fast) == 2 * pp * virtual * m - pp * skipped
        jumped += skipped > 0
        for stage in range(pp):
            want = max(s.end for s in direct if s.stage == stage and s.kind == "B")
            got = max(s.end for s in fast if s.stage == stage and s.kind == "B")
            assert got == pytest.approx(want, rel=1e-9), (m, stage)
    assert jumped >= 40 // step  # the jump is what ran, not the fallback


def test_a_trillion_micro_batches_cost_a_few_thousand_tasks(deadline: None) -> None:
    start = time.perf_counter()
    spans, _ = simulate_pipeline(4, 1, 10**12, "1f1b", lambda s, t: 1.0 if t[0] == "F"
                                       else 2.0, 0.0)
    assert time.perf_counter() - start < 5 and len(spans) < 10_000
    assert max(s.end for s in spans) == pytest.approx((10**12 + 3) * 3.0, rel=1e-12)


def test_gpipe_with_too_many_micro_batches_is_refused() -> None:
    with pytest.raises(DojoError, match="schedule=gpipe, 1000000000 micro-batches") as err:
        simulate_pipeline(2, 1, 10**9, "gpipe", lambda s, t: 1.0, 0.0)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("pp", "virtual"), [(1, 1), (2, 1), (4, 1), (2, 2), (4, 3), (8, 2)])
def test_in_flight_peak_walks_a_bounded_prefix(pp: int, virtual: int) -> None:
    """The peak of the activations in flight, with unequal chunks, equals the walk over the
    whole schedule for every micro-batch count (and GPipe's is m x the stage's bytes)."""
    rng = random.Random(pp * virtual)
    saved = [rng.uniform(0.0, 5.0) for _ in range(pp * virtual)]
    step = pp if virtual > 1 else 1
    for schedule in ("1f1b" if virtual == 1 else "interleaved", "gpipe"):
        for m in range(step, 97, step):
            for stage in range(pp):
                live = peak = 0.0
                for kind, _, c in order(schedule, stage, pp, m, virtual):
                    live += saved[c * pp + stage] if kind == "F" else -saved[c * pp + stage]
                    peak = max(peak, live)
                got = peak_in_flight(schedule, stage, pp, m, virtual, saved)
                assert got == pytest.approx(peak, rel=1e-12)


def test_a_trillion_samples_simulate_in_bounded_time_and_memory(deadline: None) -> None:
    """Issue 14 item 6: batch 10^12 on 8 A100s grew to 24 GB. Identical micro-batches make the
    step affine in their count for one stage: T(m) = m (F + B) + sync + optimizer, so the step at
    10^12 / 8 micro-batches follows from the steps at 1 and 2 (simulated task by task)."""
    spec = load_system("a100-cluster:8")
    plan = parse_plan("dp=8")
    one, two = (simulate_model("gpt", TINY, spec, plan, 8 * m).result.step_time_s
                for m in (1, 2))
    tracemalloc.start()
    start = time.perf_counter()
    big = simulate_model("gpt", TINY, spec, plan, 10**12).result
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 5 and peak < 100e6
    m = 10**12 // 8
    assert big.step_time_s == pytest.approx(one + (two - one) * (m - 1), rel=1e-9)
    json.dumps(big.to_json(), allow_nan=False)  # every number finite


@pytest.mark.parametrize(("batch", "seq", "needle"), [
    (0, None, "--batch: field 'batch' = 0"),
    (-8, None, "--batch: field 'batch' = -8"),
    (2**60, None, "from 1 to 2^53"),
    (8, 0, "--seq: field 'seq' = 0"),
])
def test_sizes_no_step_can_have_are_refused(batch: int, seq: int | None, needle: str) -> None:
    spec = load_system("a100-cluster:8")
    for call in (lambda: simulate_model("gpt", TINY, spec, parse_plan("dp=8"), batch, seq),
                 lambda: best_plan("gpt", TINY, spec, batch, seq)):
        with pytest.raises(ConfigError, match=needle.replace("^", r"\^")):
            call()


@pytest.mark.parametrize("command", ["simulate", "plan"])
def test_batch_zero_is_one_line_not_a_traceback(command: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`dojo simulate gpt2-small --system v1 --batch 0` ended in "pipeline schedule
    deadlocked"; `dojo plan` printed a best plan at 0 samples/s."""
    argv = [command, "gpt2-small", "--system", "v1", "--batch", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--batch: field 'batch' = 0" in err
