"""Bounds and monotonicity of every cost the simulator charges (issue 14), over random small
shapes, every shipped calibration and random small plans.

The bounds are closed forms from the device's figures, stated in DeviceModel.matrix_time's
docstring: no op beats the device's peak or bandwidth (lower), and no op is slower than the
whole device on its work padded to whole tiles plus one tile, or than one compute unit doing
all of it (upper). More work is never cheaper.
"""

from __future__ import annotations

import functools
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from dojo.compiler.mapping import GroupLevel, leaves_per_device
from dojo.compiler.work import OpCost
from dojo.hardware import load_system
from dojo.sim.collectives import KINDS, collective_time
from dojo.sim.costs import DeviceModel
from dojo.sim.simulate import device_for

REL = 1e-9  # float slack on comparisons of equal times
# (system, devices, precision, operand bytes) for each shipped calibration
KIND_SYSTEMS = {"a100": ("a100-cluster", 1, "bf16", 2), "h100": ("h100-cluster", 1, "bf16", 2),
                "d1": ("v1", None, "bf16", 2), "cpu": ("cpu", None, "fp32", 4)}
SLOW_KINDS = ("d1",)  # the node-level mapper searches mappings: ~0.1 s per op


@functools.cache
def _device(kind: str) -> DeviceModel:
    system, devices, precision, _ = KIND_SYSTEMS[kind]
    spec = load_system(system, devices=devices)
    dev = device_for(spec, precision, leaves_per_device(spec))
    assert dev.calibration.name == kind
    return dev


def _gemm(kind: str, b: int, m: int, n: int, k: int) -> tuple[float, float, float]:
    """(FLOP, bytes, seconds) of a batched GEMM (b x m x k) @ (b x k x n) on `kind`."""
    e = KIND_SYSTEMS[kind][3]
    flops, nbytes = 2.0 * b * m * n * k, float(b * (m * k + k * n + m * n) * e)
    op = OpCost("matrix", flops, nbytes, "aten.bmm", (b, m, n), float(b * m * n * e))
    return flops, nbytes, _device(kind).op_time(op)


def _gemm_upper(dev: DeviceModel, flops: float, nbytes: float, shape: tuple[int, int, int],
                k: int) -> float:
    """The closed-form ceiling of DeviceModel.matrix_time (see its docstring); on a D1 (its
    own mapper): one node of the chip doing the whole op at its matrix rate from its SRAM."""
    cal = dev.calibration
    if dev.timer is not None:
        nodes = leaves_per_device(load_system("v1"))
        return cal.launch_s + nodes * (flops / dev.peak_flops + nbytes / dev.mem_bytes_per_s)
    memory = nbytes / (dev.mem_bytes_per_s * cal.vector_efficiency)
    rate = dev.peak_flops * cal.matrix_efficiency
    if dev.tiling(shape) is None:
        # a CPU BLAS packs its largest matrix once per call (`matrix_pack_byte_s`, per byte)
        b, m, n = shape
        element = (nbytes / (b * (m * k + k * n + m * n)))
        pack = cal.matrix_pack_byte_s * element * b * max(m * k, k * n, m * n)
        return cal.launch_s + memory + pack + (flops + cal.matrix_half_flops) / rate
    units = dev.compute_units
    one_tile = 2.0 * cal.tile_m * cal.tile_n * k * units / rate
    return cal.launch_s + memory + min(units * flops / rate, 4 * flops / rate + one_tile)


def _fastest_bytes_per_s(dev: DeviceModel) -> float:
    """The most bytes per second any op can move: a D1's SRAM reads and writes on their own
    ports (both at once); elsewhere memory, or the cache where a calibration has a faster
    one (the CPU's eager model)."""
    if dev.timer is not None:
        sram = load_system("v1").leaf.memory["sram"]
        share = dev.mem_bytes_per_s / sram.read_bytes_per_s  # nodes of the chip
        return share * (sram.read_bytes_per_s + sram.write_bytes_per_s)
    return max(dev.mem_bytes_per_s, getattr(dev.calibration, "cache_bytes_per_s", 0.0))


def _gemm_lower(dev: DeviceModel, flops: float, nbytes: float) -> float:
    return dev.calibration.launch_s + max(flops / dev.peak_flops,
                                          nbytes / _fastest_bytes_per_s(dev))


dims = st.tuples(st.integers(1, 8), st.integers(1, 1024), st.integers(1, 1024),
                 st.integers(1, 1024))


def _check_gemm(kind: str, shape: tuple[int, int, int, int], axis: int, grow: int) -> None:
    dev = _device(kind)
    b, m, n, k = shape
    flops, nbytes, t = _gemm(kind, b, m, n, k)
    assert t >= dev.calibration.launch_s
    assert t >= _gemm_lower(dev, flops, nbytes) * (1 - REL), (shape, t)
    assert t <= _gemm_upper(dev, flops, nbytes, (b, m, n), k) * (1 + REL), (shape, t)
    bigger = list(shape)
    bigger[axis] += grow
    assert _gemm(kind, *bigger)[2] >= t * (1 - REL), (shape, bigger)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from([k for k in KIND_SYSTEMS if k not in SLOW_KINDS]), shape=dims,
       axis=st.integers(0, 3), grow=st.integers(1, 600))
def test_gemm_time_is_bounded_and_monotone(kind: str, shape: tuple[int, int, int, int],
                                           axis: int, grow: int) -> None:
    """GPUs and the CPU: launch <= lower <= time <= upper, and growing b, m, n or k never makes
    a GEMM cheaper (the tile edges included: 256 -> 257 rows adds a tile, never halves one)."""
    _check_gemm(kind, shape, axis, grow)


@settings(max_examples=8, deadline=None)
@given(kind=st.sampled_from(SLOW_KINDS),
       shape=st.tuples(st.integers(1, 4), st.integers(1, 512), st.integers(1, 512),
                       st.integers(1, 512)),
       axis=st.integers(0, 3), grow=st.integers(1, 256))
def test_d1_gemm_time_is_bounded_and_monotone(kind: str, shape: tuple[int, int, int, int],
                                              axis: int, grow: int) -> None:
    """A D1 chip of V1 (its node-level mapper, DIP HBM behind it): the same properties, with
    one node of the chip doing the whole op as the ceiling."""
    _check_gemm(kind, shape, axis, grow)


def test_gemm_edges_of_the_tile() -> None:
    """The cases a per-tile average gets wrong: one row past a tile edge adds a tile and must
    not halve the time; a single tile runs at one SM's share, so far below the old 1 ms."""
    for m in (128, 255, 256, 257, 384, 511, 512, 513):
        assert _gemm("h100", 1, m + 1, 128, 512)[2] >= _gemm("h100", 1, m, 128, 512)[2]
    assert _gemm("h100", 1, 64, 64, 64)[2] < 20e-6


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(list(KIND_SYSTEMS)), nbytes=st.floats(1.0, 6.4e7),
       flops=st.floats(0.0, 1e8), grow=st.floats(1.0, 8.0))
def test_vector_time_is_bounded_and_monotone(kind: str, nbytes: float, flops: float,
                                             grow: float) -> None:
    """Elementwise ops: at least launch + max(bytes / fastest bw, FLOP / vector peak); at most
    launch + bytes / (bw e_vec) + FLOP / (vector peak x its efficiency) on a GPU or CPU; more
    bytes or FLOP never cheaper."""
    dev = _device(kind)
    cal = dev.calibration

    def t(nb: float, f: float) -> float:
        return dev.op_time(OpCost("vector", f, nb, "aten.add"))

    base = t(nbytes, flops)
    lower = max(nbytes / _fastest_bytes_per_s(dev), flops / dev.vector_flops)
    assert base >= cal.launch_s + lower * (1 - REL)
    if dev.timer is None:
        # the CPU's eager model runs vector FLOP at a fraction of the FP32 peak (where it has one)
        e_flops = getattr(cal, "vector_compute_efficiency", 1.0)
        upper = cal.launch_s + nbytes / (dev.mem_bytes_per_s * cal.vector_efficiency) \
            + flops / (dev.vector_flops * e_flops)
        assert base <= upper * (1 + REL)
    assert t(nbytes * grow, flops) >= base * (1 - REL)
    assert t(nbytes, flops * grow) >= base * (1 - REL)


levels = st.lists(st.tuples(st.integers(2, 64), st.floats(1e9, 1e12), st.floats(0.0, 2e-5),
                            st.sampled_from(["switch", "mesh2d", "fat_tree"])),
                  min_size=1, max_size=3)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(KINDS), nbytes=st.floats(1.0, 1e10), grow=st.floats(1.0, 16.0),
       spec=levels, eff=st.floats(0.5, 1.0), alpha=st.floats(0.0, 1e-5))
def test_collective_time_is_bounded_and_monotone(kind: str, nbytes: float, grow: float,
                                                 spec: list[tuple[int, float, float, str]],
                                                 eff: float, alpha: float) -> None:
    """Every collective: at least one step's latency and the innermost level's share of the
    bytes over its bandwidth (all-to-all: a member's whole share over all levels' bandwidth);
    at most the flat ring (always applicable); more bytes never cheaper."""
    group = tuple(GroupLevel("lv", "link", n, bw, lat, topo) for n, bw, lat, topo in spec)
    t, _ = collective_time(kind, nbytes, group, eff, alpha)
    members = math.prod(lv.members for lv in group)
    lat = max(lv.latency_s for lv in group) + alpha
    slow = min(lv.bytes_per_s for lv in group) * eff
    passes = 2 if kind == "all_reduce" else 1
    inner = group[0]
    share = 1.0 if kind == "send_recv" else (inner.members - 1) / inner.members
    assert t >= min(lv.latency_s for lv in group) + alpha - REL * t
    if kind == "all_to_all":
        # A member's (n-1)/n of the buffer leaves over every level at once at best.
        total_bw = sum(lv.bytes_per_s for lv in group) * eff
        assert t >= (members - 1) / members * nbytes / total_bw * (1 - REL)
    else:
        assert t >= passes * share * nbytes / (inner.bytes_per_s * eff) * (1 - REL)
    ring = lat + nbytes / slow if kind == "send_recv" else \
        passes * (members - 1) * (lat + nbytes / (members * slow))
    assert t <= ring * (1 + REL)
    assert collective_time(kind, nbytes * grow, group, eff, alpha)[0] >= t * (1 - REL)


TINY = {"layers": 4, "hidden": 64, "heads": 4, "ffn": 256, "seq": 32, "vocab": 256}


@settings(max_examples=10, deadline=None)
@given(system=st.sampled_from(["a100-cluster", "h100-cluster", "d1"]),
       dp=st.sampled_from([1, 2]), tp=st.sampled_from([1, 2]), pp=st.sampled_from([1, 2]),
       interleave=st.sampled_from([1, 2]), recompute=st.sampled_from(["none", "full"]),
       per_replica=st.integers(1, 3))
def test_step_time_never_falls_when_the_batch_doubles(system: str, dp: int, tp: int, pp: int,
                                                      interleave: int, recompute: str,
                                                      per_replica: int) -> None:
    """A small GPT at a fixed plan: twice the batch is twice the micro-batches, never less
    time (a D1 system file is one chip, so its plans are dp = tp = pp = 1). One micro-batch
    size, so that the model is captured once."""
    from dojo.plan import parse_plan
    from dojo.sim.session import simulate_model

    if system == "d1":
        dp = tp = pp = 1
    mb, interleave = 2, interleave if pp > 1 else 1
    plan = parse_plan(f"dp={dp},tp={tp},pp={pp},mb={mb},interleave={interleave},"
                      f"recompute={recompute}")
    batch = dp * mb * per_replica * pp  # an interleaved schedule wants micro-batches % pp == 0
    devices = None if system == "d1" else dp * tp * pp
    one = simulate_model("gpt", TINY, system, plan, batch, devices=devices).result
    two = simulate_model("gpt", TINY, system, plan, 2 * batch, devices=devices).result
    assert two.step_time_s >= one.step_time_s * (1 - REL)
    assert one.step_time_s > 0
