"""Where an eager step's ops find their operands (issue 14 item 4, `dojo.sim.eager.in_cache`):
in the cache while one micro-batch's pass streams no more than it holds, else in memory.

Measured on a 2-core Xeon VM (2 MiB L2, docs/benchmarks.md fifteenth round, bench/op_context.py):
in a replay of gpt's whole step, an op's first run costs 55-93 ns more per KiB of operands than
its immediate repeat, which is the memory bandwidth the calibration measures (15 GB/s) and not
the cache's (143 GB/s)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dojo.compiler.work import OpCost
from dojo.hardware import load_system
from dojo.plan import parse_plan
from dojo.sim.costs import DeviceModel, load_calibration
from dojo.sim.eager import in_cache, pass_bytes
from dojo.sim.session import compile_model
from dojo.sim.simulate import device_for

GPT = {"layers": 3, "hidden": 32, "heads": 4, "ffn": 64, "seq": 16, "vocab": 64}


def _device(cold: bool) -> DeviceModel:
    cal = replace(load_calibration("cpu"), launch_s=1e-6, cache_bytes=1e6,
                  cache_bytes_per_s=1e11, matrix_half_flops=1e5, epilogue_overlap=1.0,
                  matrix_pack_byte_s=0.0, matrix_memory_call_s=0.0, matrix_memory_byte_s=0.0)
    return DeviceModel(peak_flops=1e11, vector_flops=1e11, mem_bytes_per_s=1e10,
                       calibration=cal, cold=cold)


def test_a_cold_device_streams_from_memory_even_what_fits_the_cache() -> None:
    """Hot: 1e5 bytes from the cache, 1e-6 s; cold: from memory, 1e-5 s (plus the launch)."""
    hot, cold = _device(False), _device(True)
    assert hot.stream_time(1e5) == pytest.approx(1e5 / 1e11, rel=1e-12)
    assert cold.stream_time(1e5) == pytest.approx(1e5 / 1e10, rel=1e-12)
    vector = OpCost("vector", 0.0, 1e5, "aten.add.Tensor")
    assert cold.op_time(vector) - hot.op_time(vector) == pytest.approx(9e-6, rel=1e-9)


def test_a_cold_gemm_reads_its_operands_before_its_k_loop() -> None:
    """A GEMM of 1e6 FLOP (compute (1e6 + 1e5) / 1e11 = 11 us) moving 2e5 bytes (20 us at
    memory's 1e10 B/s), its output store hidden (`epilogue_overlap` 1): hot, reads and compute
    overlap (max: 20 us); cold, they add (31 us). Plus the launch, 1 us."""
    op = OpCost("matrix", 1e6, 2e5, "aten.mm.default", shape=(1, 64, 64), out_bytes=5e4)
    assert _device(False).op_time(op) == pytest.approx(max(11e-6, 20e-6) + 1e-6, rel=1e-9)
    assert _device(True).op_time(op) == pytest.approx(11e-6 + 20e-6 + 1e-6, rel=1e-9)


def _program() -> object:
    spec = load_system("cpu")
    program, _ = compile_model("gpt", GPT, spec, parse_plan("dp=1,precision=fp32"), batch=3)
    return program


def test_the_pass_decides_by_the_measured_cache() -> None:
    """The busiest chunk's forward and backward bytes (the reuse distance of its weights)
    against `cache_bytes`: a cache one byte larger keeps the device hot, one byte smaller makes
    it cold; a device that is not eager (a compiled GPU step) or measured no cache stays hot."""
    program = _program()
    ops = [o for c in program.chunks for o in c.forward + c.backward]  # one chunk at pp=1
    streamed = sum(o.bytes for o in ops)
    assert pass_bytes(program) == pytest.approx(streamed, rel=1e-12) and streamed > 0
    dev = device_for(program.system, "fp32")

    def with_cache(size: float, eager: bool = True) -> DeviceModel:
        cal = replace(dev.calibration, cache_bytes=size, eager=eager)
        return in_cache(program, replace(dev, calibration=cal))

    assert not with_cache(streamed + 1).cold
    assert with_cache(streamed - 1).cold
    assert not with_cache(streamed - 1, eager=False).cold
    assert not with_cache(0.0).cold


def test_a_cold_step_is_never_cheaper_than_the_same_step_hot() -> None:
    """Every op of the program costs at least as much cold as hot, and every GEMM strictly more
    (its reads add to its compute; a vector kernel's stream still overlaps its arithmetic, so
    a compute-bound one, GELU's, costs the same)."""
    program = _program()
    dev = device_for(program.system, "fp32")
    cold = replace(dev, cold=True)
    for op in (o for c in program.chunks for o in c.forward + c.backward):
        assert cold.op_time(op) >= dev.op_time(op) - 1e-15
        if op.kind == "matrix" and op.bytes > 0:
            assert cold.op_time(op) > dev.op_time(op)
