"""Uneven pipeline stages (`stages=`, issue 11): each stage timed by its own work, the slowest
setting the steady state, memory from its own blocks; the splits the planner writes; plans that
leave devices idle."""

from __future__ import annotations

import json

import pytest

from dojo.cli.main import main
from dojo.compiler.placement import devices_placed, tp_placed
from dojo.hardware import load_system
from dojo.plan import parse_plan
from dojo.plan.stages import default_split, planner_splits
from dojo.sim.pipeline import run_pipeline
from dojo.sim.session import simulate_model
from dojo.sim.simulate import chunk_times, device_model

# Llama 3.1 405B (Meta, "The Llama 3 Herd of Models", 2024): 126 layers, d = 16384, 128 heads
# of 128, 8 KV heads, FFN 53248, vocabulary 128256, no biases, untied head.
D, KV, FFN, VOCAB = 16384, 8 * 128, 53248, 128256
BLOCK_405B = 2 * D * D + 2 * D * KV + 3 * D * FFN + 2 * D   # q, o; k, v; SwiGLU; 2 RMSNorms
LLAMA_SPLIT = "7:" + "8:" * 14 + "7"


def _end(pp: int, interleave: int, micro: int, schedule: str, fwd: list[float],
         bwd: list[float]) -> float:
    def duration(stage: int, task: tuple[str, int, int]) -> float:
        return (fwd if task[0] == "F" else bwd)[task[2] * pp + stage]
    return max(s.end for s in run_pipeline(pp, interleave, micro, schedule, duration, 0.0))


@pytest.mark.parametrize("micro", [1, 5, 40])
def test_gpipe_with_unequal_stages_is_two_flow_shops(micro: int) -> None:
    """GPipe runs every forward, then every backward: two flow shops of identical jobs, each
    sum(stage times) + (m - 1) x the slowest stage's time (no transfer)."""
    fwd, bwd = [1.0, 2.5, 1.5, 0.7], [2.0, 3.0, 4.0, 1.0]
    expect = sum(fwd) + sum(bwd) + (micro - 1) * (max(fwd) + max(bwd))
    assert _end(4, 1, micro, "gpipe", fwd, bwd) == pytest.approx(expect, rel=1e-12)


@pytest.mark.parametrize(("pp", "interleave", "schedule"), [(4, 1, "1f1b"),
                                                            (4, 2, "interleaved")])
def test_slowest_device_sets_the_steady_state(pp: int, interleave: int, schedule: str) -> None:
    """Under 1F1B each micro-batch more costs the slowest device's forward + backward over its
    chunks, whatever the other stages take."""
    fwd = [1.0, 2.0, 1.5, 0.5, 1.2, 0.8, 2.2, 1.0][:pp * interleave]
    bwd = [2.0 * f + 0.1 * i for i, f in enumerate(fwd)]
    period = max(sum(fwd[c * pp + s] + bwd[c * pp + s] for c in range(interleave))
                 for s in range(pp))
    a, b = (_end(pp, interleave, m, schedule, fwd, bwd) for m in (40, 40 + pp))
    assert (b - a) / pp == pytest.approx(period, rel=1e-9)


def test_llama3_405b_on_16_uneven_stages() -> None:
    """Llama 3 405B's 126 layers on 16 stages, as Meta trained it (first and last stage one
    layer fewer): each stage holds its own blocks' parameters (closed form from the published
    shape), and a middle stage's forward of 9 blocks takes 9/8 of one of 8."""
    plan = parse_plan(f"dp=1,tp=8,pp=16,mb=1,stages={LLAMA_SPLIT.replace('8:8:8', '9:8:7', 1)}")
    sim = simulate_model("llama3-405b", {}, "h100-cluster:128", plan, 16)
    program = sim.program
    split = [7, 9, 8, 7] + [8] * 11 + [7]
    assert [c.blocks for c in program.chunks] == split
    for stage, blocks in enumerate(split):
        whole = blocks * BLOCK_405B + (VOCAB * D if stage == 0 else 0) \
            + (VOCAB * D + D if stage == 15 else 0)     # embedding; head and final norm
        assert program.device_params(stage) == pytest.approx(whole / 8, rel=1e-12)
    dev = device_model(program)
    times = [chunk_times(program, c, dev, sim.result.memory) for c in program.chunks]
    assert times[1].forward / times[2].forward == pytest.approx(9 / 8, rel=1e-12)
    assert times[3].forward / times[2].forward == pytest.approx(7 / 8, rel=1e-12)
    # memory: the most loaded stage is reported, from its own blocks
    assert sim.result.memory.params >= program.device_params(1) * 2


def test_default_and_planner_splits() -> None:
    assert default_split(126, 16) == [7] + [8] * 14 + [7]          # Llama 3's split
    assert default_split(96, 8) == [12] * 8 and default_split(126, 10) is None
    splits = planner_splits(126, 16)
    assert tuple(default_split(126, 16) or ()) in splits
    assert all(sum(s) == 126 and len(s) == 16 for s in splits)
    assert len(set(splits)) == len(splits) <= 9
    ten = planner_splits(126, 10)          # neither even nor Llama's: still balanced
    assert ten and min(max(s) for s in ten) == 13          # ceil(126 / 10)
    assert planner_splits(4, 7) == [] and planner_splits(4, 6) == [(0, 1, 1, 1, 1, 0)]


def test_tile_placement_rectangles() -> None:
    """On a 5 x 5 tile a tp group is an a x b rectangle (a, b <= 5) or whole tiles; a plan
    occupies whole tiles or one rectangle."""
    v1 = load_system("v1")
    rectangles = {a * b for a in range(1, 6) for b in range(1, 6)}
    assert {n for n in range(1, 30) if tp_placed(v1, n)} == rectangles
    assert tp_placed(v1, 50) and not tp_placed(v1, 30)
    assert [n for n in (20, 24, 25, 26, 50, 150) if devices_placed(v1, n)] == [20, 25, 50, 150]
    gpus = load_system("h100-cluster:16")
    assert tp_placed(gpus, 7) and devices_placed(gpus, 13)


SETS = ["--set", "layers=4", "--set", "hidden=128", "--set", "heads=4", "--set", "ffn=512",
        "--set", "vocab=1024", "--set", "seq=128"]


@pytest.mark.parametrize(("plan", "needle"), [
    ("dp=1,pp=2,stages=1:2", "add up to the model's 4 blocks (1 + 2 = 3)"),
    ("dp=1,pp=2,stages=1:1:2", "pp 2 x interleave 1 = 2 counts, not 3"),
    ("dp=1,pp=2,stages=1:x", "('x' is not one)"),
    ("dp=1,pp=2,stages=5:-1", "(-1 is negative)"),
    ("dp=1,pp=2,interleave=4", "= 8 divides neither 4 nor 4 + 2 (embedding and head as "
     "blocks); give the blocks per stage with stages=a:b:..."),
    ("dp=2,tp=2,pp=2,mb=1,stages=2:2", "at most the system's 4 devices (dp 2 x tp 2 x pp 2 = 8)"),
    ("dp=3,mb=1", "batch 8 / (dp 3 x mb 1) = 2.66667"),
])
def test_bad_stages_and_device_counts(capsys: pytest.CaptureFixture[str], plan: str,
                                      needle: str) -> None:
    code = main(["simulate", "gpt", *SETS, "--system", "a100-cluster:4", "--plan", plan,
                 "--batch", "8"])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1, err


def test_idle_devices_are_reported_and_draw_idle_power(capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    """dp=1 on 2 GPUs: 1 idle, said in the text and JSON; the step is the one GPU's, and the
    energy adds the idle GPU at the calibrated idle fraction of its power for the step."""
    runs = {}
    for n in (1, 2):
        assert main(["simulate", "gpt", *SETS, "--system", f"a100-cluster:{n}", "--plan",
                     "dp=1,mb=2", "--batch", "8", "--json"]) == 0
        runs[n] = json.loads(capsys.readouterr().out)
    assert (runs[1]["devices"], runs[1]["idle_devices"]) == (1, 0)
    assert (runs[2]["devices"], runs[2]["idle_devices"]) == (1, 1)
    assert runs[2]["step_time_s"] == runs[1]["step_time_s"]
    spec = load_system("a100-cluster:2")
    sim = simulate_model("gpt", {k: int(v) for k, v in (s.split("=") for s in SETS[1::2])},
                         spec, parse_plan("dp=1,mb=2"), 8)
    idle_j = spec.leaf.power_watts * device_model(sim.program).calibration.idle_fraction \
        * runs[2]["step_time_s"]
    assert runs[2]["energy_j"] - runs[1]["energy_j"] == pytest.approx(idle_j, rel=1e-9)
    assert main(["simulate", "gpt", *SETS, "--system", "a100-cluster:2", "--plan", "dp=1,mb=2",
                 "--batch", "8"]) == 0
    assert "1 gpus (1 of 2 idle)" in capsys.readouterr().out


@pytest.mark.slow
def test_gpt3_175b_on_an_exapod_is_planned_on_whole_tiles() -> None:
    """Issue 11: 3,000 chips factor into neither 96 layers, 96 heads nor 1,536 samples; the
    search places a plan on whole tiles and leaves the rest idle. Its time (the issue's 60 s)
    is measured by bench/bench_sim.py, not here: a timed test fails on a loaded machine."""
    from dojo.sim.search import best_plan

    found = best_plan("gpt3-175b", {}, load_system("exapod"), 1536)
    plan, program = found.best.plan, found.best.simulated.program
    assert found.best.fits
    assert plan.devices % 25 == 0 and tp_placed(load_system("exapod"), plan.tp)
    assert program.idle_devices == 3000 - plan.devices
    assert 1536 % (plan.dp * plan.mb) == 0 and 96 % plan.tp == 0


@pytest.mark.slow
@pytest.mark.parametrize("system", ["v1"])
def test_llama3_405b_on_dojo_says_in_one_line_why_nothing_fits(
        capsys: pytest.CaptureFixture[str], system: str) -> None:
    """On the ExaPOD a plan now fits (dp=5,tp=8,pp=35,cp=2,recompute=full,zero=3): the block a
    full recompute rebuilds is smaller since a fused SwiGLU keeps its inputs only
    (compiler.kernelsave); docs/benchmarks.md."""
    code = main(["plan", "llama3-405b", "--system", system])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 2 and err[0].startswith("searching plans")
    assert err[1].startswith("dojo: error: no plan fits llama3-405b on " + system)
    assert "capacity 4.71 GB" in err[1] or "capacity of 4.71 GB" in err[1]
