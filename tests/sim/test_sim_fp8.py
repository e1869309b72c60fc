"""precision=fp8 on GPUs against closed forms: FP8 GEMMs at the FP8 roofline, the per-tensor
scaling casts as memory-bound kernels, BF16 elsewhere, the FP8 weight cache in memory; refused
on GPUs without FP8 tensor cores. Peaks are the datasheets' (shared/dojo-hardware.md): H100 and
H200 SXM 989 TFLOPS BF16 and 1,979 TFLOPS FP8 dense; A100 has no FP8."""

from __future__ import annotations

import math

import pytest

from dojo.cli.main import main
from dojo.compiler.work import OpCost
from dojo.hardware.derived import summarize
from dojo.hardware.loader import load_system
from dojo.plan.plan import parse_plan
from dojo.sim.costs import load_calibration
from dojo.sim.fp8 import as_fp8, cast_bytes, fp8_device
from dojo.sim.memory import device_memory, state_memory
from dojo.sim.session import compile_model
from dojo.sim.simulate import chunk_times, device_for, device_model

BF16, FP8 = 989e12, 1979e12
MODEL = {"layers": 4, "hidden": 1024, "heads": 8, "seq": 1024, "vocab": 512, "ffn": 4096}


def _gemm(m: int, n: int, k: int) -> OpCost:
    """A BF16 linear y (m, n) = x (m, k) W (k, n): reads 2 (m k + k n), writes 2 m n bytes."""
    return OpCost("matrix", 2.0 * m * n * k, 2.0 * (m * k + k * n + m * n), "aten.mm.default",
                  (1, m, n), out_bytes=2.0 * m * n)


@pytest.mark.parametrize("system", ["h100-cluster", "h200-cluster"])
def test_fp8_gemm_runs_at_the_fp8_roofline(system: str) -> None:
    spec = load_system(system)
    dev = device_for(spec, "fp8")
    dev8 = fp8_device(dev, spec)
    assert (dev.peak_flops, dev8.peak_flops) == (BF16, FP8)
    cal = load_calibration("h100")
    m = n = k = 8192
    tiles = (m // 256) * (n // 128)
    waves = math.ceil(tiles / 132)
    bw = spec.leaf.memory["hbm"].read_bytes_per_s * cal.vector_efficiency
    op = _gemm(m, n, k)
    for peak, reads in ((BF16, 2.0 * (m * k + k * n)), (FP8, 1.0 * (m * k + k * n))):
        compute = waves * 132 * 256 * 128 * 2.0 * k / (peak * cal.matrix_efficiency)
        expected = max(compute, reads / bw) + 2.0 * m * n / bw + cal.launch_s
        got = (dev if peak == BF16 else dev8).op_time(op if peak == BF16 else as_fp8(op))
        assert got == pytest.approx(expected)
    assert as_fp8(op).bytes == pytest.approx(1.0 * (m * k + k * n) + 2.0 * m * n)


def test_cast_bytes_per_gemm() -> None:
    op = _gemm(4096, 3072, 1024)
    # amax read (2) + cast read (2) + FP8 data and transpose (1 + 1) per element
    assert cast_bytes(op, "forward") == 6 * 4096 * 1024       # X (m, k)
    assert cast_bytes(op, "backward") == 6 * 4096 * 3072      # dY (m, n)
    assert cast_bytes(op, "weight") == 6 * 1024 * 3072        # W (k, n), once a step


def test_chunk_times_split_fp8_gemms_bf16_rest_and_casts() -> None:
    spec = load_system("h100-cluster", devices=1)
    program = compile_model("gpt", MODEL, spec, parse_plan("mb=2,precision=fp8"), 8)[0]
    bf16 = compile_model("gpt", MODEL, spec, parse_plan("mb=2"), 8)[0]
    dev = device_model(program)
    dev8 = fp8_device(dev, spec)
    block = program.work.block
    assert block is not None
    lin = [o for o in block.forward if o.target in ("aten.addmm.default", "aten.mm.default")]
    assert len(lin) == 4
    m = program.microbatches
    fwd8 = sum(dev8.op_time(as_fp8(o)) for o in lin)
    fwd16 = sum(dev.op_time(o) for o in lin)
    casts = sum(dev.vector_time(6 * o.shape[1] * o.flops / (2 * o.shape[1] * o.shape[2]))
                + dev.vector_time(6 * o.flops / (2 * o.shape[1])) / m for o in lin)
    chunk = program.chunks[0]
    t8 = chunk_times(program, chunk, dev, device_memory(program)).forward
    t16 = chunk_times(bf16, bf16.chunks[0], dev, device_memory(bf16)).forward
    # only the blocks' linears change (the head and attention stay BF16), and the casts add
    assert t16 - t8 == pytest.approx(MODEL["layers"] * (fwd16 - fwd8 - casts))
    assert fwd8 < fwd16


def test_fp8_memory_caches_fp8_weights() -> None:
    params = 1e9
    w, g, o = state_memory(parse_plan("precision=fp8"), params, 8.0)
    assert (w, g, o) == (params * (2 + 2 + 4), params * 4, params * 8)  # BF16 + FP8 cache + master
    w16, _, _ = state_memory(parse_plan("precision=bf16"), params, 8.0)
    assert w - w16 == params * 2


def test_h200_is_an_h100_with_more_hbm() -> None:
    h100, h200 = summarize(load_system("h100-cluster", devices=1)), \
        summarize(load_system("h200-cluster", devices=1))
    assert h200.peak_flops == h100.peak_flops
    assert h200.peak_flops["fp8"] == pytest.approx(FP8)
    assert h200.hbm_bytes == 143_771 * 2 ** 20  # NVML's total for the "141 GB" H200 (Modal)
    assert load_system("h200-cluster").leaf.memory["hbm"].read_bytes_per_s == \
        pytest.approx(4.8e12)


@pytest.mark.parametrize("system", ["a100-cluster:8", "v1"])
def test_fp8_is_refused_without_fp8_tensor_cores(system: str, capsys) -> None:  # type: ignore[no-untyped-def]
    devices = 8 if system.startswith("a100") else 150
    rc = main(["simulate", "gpt", "--system", system, "--batch", str(devices),
               "--plan", f"dp={devices},precision=fp8"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert system.split(":")[0] in err and "FP8" in err


def test_linear_inputs_are_kept_in_fp8() -> None:
    """Per GPT block, the tensors only weight GEMMs read in the backward (LN1 out 2 s b h, LN2
    out 2 s b h, GELU out 8 s b h BF16 bytes) halve, and the attention output (also read by
    FlashAttention's backward) gains its FP8 copy (+1 s b h): -1 - 1 - 4 + 1 = -5 s b h; with
    tp=2 the LayerNorm outputs stay whole: -3.5; with sp every term halves: -2.5."""
    from dojo.compiler.fp8 import fp8_saved_change
    from dojo.sim.session import captured

    s, b, h = 256, 2, 128
    graph, _ = captured("gpt", {"layers": 4, "hidden": h, "heads": 4, "seq": s, "vocab": 512,
                                "ffn": 4 * h}, b, None)
    sbh = s * b * h
    for tp, sp, change in ((1, False, -5.0), (2, False, -3.5), (2, True, -2.5)):
        assert fp8_saved_change(graph, tp, sp, 0.5) == pytest.approx(change * sbh)
    spec = load_system("h100-cluster", devices=1)
    model = {"layers": 4, "hidden": h, "heads": 4, "seq": s, "vocab": 512, "ffn": 4 * h}
    fp8, bf16 = (compile_model("gpt", model, spec, parse_plan(f"mb={b},precision={p}"), b)[0]
                 for p in ("fp8", "bf16"))
    assert fp8.chunks[0].saved_bytes - bf16.chunks[0].saved_bytes == pytest.approx(-4 * 5 * sbh)


def test_fp8_params_hold_fp8_weights_only() -> None:
    from dojo.errors import ConfigError
    from dojo.sim.fp8 import gathered_weight_bytes

    plan = parse_plan("dp=4,zero=1,precision=fp8,fp8_params=on")
    w, g, _ = state_memory(plan, 1e9, 8.0)
    assert (w, g) == (1e9 * (2 + 4 / 4), 4e9)  # FP8 data + transpose, FP32 master over dp
    assert gathered_weight_bytes(plan) == 1.0
    assert gathered_weight_bytes(parse_plan("precision=fp8")) == 2.0
    with pytest.raises(ConfigError, match="fp8_params"):
        parse_plan("fp8_params=on")


def test_plan_search_bounds_hold_under_fp8() -> None:
    """The plan search's bounds (every matrix op at the FP8 peak, no casts) stay below the
    simulated FP8 step for every plan of a small space whose GEMMs are compute-bound (timed
    on the BF16 device instead, 39 of its 105 first bounds exceed the step)."""
    from dojo.compiler.mapping import device_count
    from dojo.sim import session
    from dojo.sim.search import _Screen, plan_space
    from dojo.sim.session import model_shape
    from dojo.sim.simulate import simulate
    from dojo.sim.stepbound import lower_bound

    tiny = {"layers": 2, "hidden": 2048, "heads": 16, "seq": 1024, "vocab": 128, "ffn": 8192}
    spec = load_system("h100-cluster:2")
    screen = _Screen("gpt", tiny, spec, 8, None)
    shape = model_shape(*session.captured("gpt", tiny, 1, None))
    checked = 0
    for plan in plan_space(shape, device_count(spec), 8, precision="fp8"):
        program, _ = compile_model("gpt", tiny, spec, plan, 8, derive=True)
        step = simulate(program).step_time_s
        assert screen._first_bound(plan) <= step * (1 + 1e-12), plan.text()
        assert lower_bound(program) <= step * (1 + 1e-9), plan.text()
        checked += 1
    assert checked >= 100


def test_mfu_is_relative_to_the_fp8_peak() -> None:
    from dojo.sim.simulate import simulate

    spec = load_system("h100-cluster", devices=1)
    program = compile_model("gpt", MODEL, spec, parse_plan("mb=2,precision=fp8"), 8)[0]
    result = simulate(program)
    assert result.mfu == pytest.approx(program.model_flops / result.step_time_s / FP8)
