"""Cost models per device kind: how long an op or a collective takes on one device.

Ops follow a roofline: a matrix op of F FLOP reading R bytes and writing W bytes takes
max(C, R' / (bw * e_vec)) + W' / (bw * e_vec) + launch, where C is its tensor-core time
(`DeviceModel.matrix_compute_time`: on a GPU, waves of output tiles, each tile at one SM's
share of the peak, so a GEMM too small to fill the device runs at the rate of the SMs it
fills; where no tiling is known, (F + F_half) / (peak * e_max)) and W' = (1 -
epilogue_overlap) * W is the part of the output store the kernel does not hide behind its
tensor-core loop (R' = R + W - W'); vector ops are bound by memory bandwidth.
Calibrations are data (sim/calibration/*.toml), measured by bench/calibrate_cpu.py and
bench/calibrate_gpu.py where the device is at hand and taken from published measurements
otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from dojo.compiler.eager_cpu import INNER_VIEWS
from dojo.hardware.calibration import (  # the schema and loading live with the hardware
    Calibration,
    calibration_names,
    calibration_with,
    load_calibration,
)
from dojo.sim.attention import AttentionKernel, attention_compute_time, is_fused_attention

# Bytes one FP32 gradient element's accumulation add streams: the gradient held, the new one,
# the sum written back.
ACCUMULATE_BYTES = 3 * 4

__all__ = ["ACCUMULATE_BYTES", "Calibration", "DeviceModel", "calibration_names",
           "calibration_with", "load_calibration"]


@dataclass(frozen=True)
class DeviceModel:
    """One device as the simulator times it: peak FLOP/s at the plan's dtype, memory bandwidth."""

    peak_flops: float
    vector_flops: float
    mem_bytes_per_s: float
    calibration: Calibration
    # A device-specific op model (the D1 node-level compiler) replacing the roofline.
    timer: Callable[[Any], float] | None = None
    compute_units: int = 0  # streaming multiprocessors, for wave quantisation
    # The plan's named attention kernel (`attn`, `dojo.sim.attention`); None: fused attention
    # at the GEMM calibration, as any matrix op of unknown shape.
    attention: AttentionKernel | None = None
    # An eager device whose pass streams more than its cache (`dojo.sim.eager.in_cache`): its
    # ops find their operands in memory, not in the cache.
    cold: bool = False
    # The share of their `cold_*` figures a pass's cold call sites pay (`dojo.sim.eager`,
    # `code_in_cache`): 0 where the step's code stays in the caches.
    code_cold: float = 0.0

    def tiling(self, shape: tuple[int, int, int]) -> tuple[int, int, int] | None:
        """(tiles, tile rows, tile columns) of a GEMM whose output is `shape` = (batch, m, n):
        the calibration's output tile, clipped to the output (no kernel uses a tile larger than
        its problem); None where no tiling is known (no compute units or tile in the
        calibration: CPU, D1; or no shape: fused attention)."""
        b, m, n = shape
        cal = self.calibration
        if not (self.compute_units and cal.tile_m and cal.tile_n and b > 0 and m > 0 and n > 0):
            return None
        rows, cols = min(m, cal.tile_m), min(n, cal.tile_n)
        return b * -(-m // rows) * -(-n // cols), rows, cols

    def wave_efficiency(self, shape: tuple[int, int, int]) -> float:
        """Fraction of the compute units' slots that the output tiles fill over the waves:
        tiles / (waves x units), with waves = ceil(tiles / units); 1 when not tiled."""
        tiling = self.tiling(shape)
        if tiling is None:
            return 1.0
        waves = -(-tiling[0] // self.compute_units)
        return tiling[0] / (waves * self.compute_units)

    def matrix_compute_time(self, flops: float, shape: tuple[int, int, int] = (0, 0, 0)) -> float:
        """Seconds of tensor-core work for a GEMM of `flops` FLOP with output `shape`.

        Tiled (a GPU with a known output tile): each compute unit runs one tile at a time at
        its share of the rate, peak / units x e_max, and every tile of a wave costs a whole
        tile (edge tiles are masked, not smaller), so the time is waves x one tile's time:
        waves x 2 rows cols k / (peak / units x e_max), k = flops / (2 b m n). A GEMM of one
        tile thus runs at one unit's rate, not the device's. Untiled: (flops + F_half) /
        (peak x e_max), the half-saturation efficiency e_max F / (F + F_half) written as the
        fixed ramp it amounts to. Either is non-decreasing in b, m, n and k.
        """
        if flops <= 0:
            return 0.0
        cal = self.calibration
        rate = self.peak_flops * cal.matrix_efficiency
        tiling = self.tiling(shape)
        if tiling is None:
            return (flops + cal.matrix_half_flops) / rate
        tiles, rows, cols = tiling
        waves = -(-tiles // self.compute_units)
        b, m, n = shape
        return flops * waves * self.compute_units * rows * cols / (b * m * n * rate)

    def matrix_time(self, flops: float, nbytes: float, shape: tuple[int, int, int] = (0, 0, 0),
                    out_bytes: float = 0.0, gemm: bool = False) -> float:
        """Seconds for a matmul/conv/attention op of `flops` FLOP moving `nbytes` bytes, of which
        `out_bytes` are its output (stored after the K loop unless the kernel hides it):
        max(compute, reads / (bw e_vec)) + store / (bw e_vec) + launch.

        Bounds (tested in tests/sim/test_sim_cost_bounds.py), with F = flops, U units,
        e = e_max, bw the memory bandwidth, t1 = 2 tile_m tile_n k / (peak / U x e) one whole
        tile on one unit:
        - lower: launch + max(F / peak, nbytes / bw): the device never beats its own peak;
        - upper, tiled: launch + nbytes / (bw e_vec) + min(U F / (peak e), 4 F / (peak e) + t1):
          never slower than one unit doing all the work (U >= 8), nor than the whole device
          on the work padded to whole tiles (under 2x in m and in n) plus one tile;
        - upper, untiled: launch + nbytes / (bw e_vec) + (F + F_half) / (peak e).
        A `cold` device reaches that upper bound: a small GEMM packs its operands before its
        K loop and stores its output after it, and neither hides behind it when the operands
        come from memory (bench/op_context.py). A `gemm` (a BLAS call: not a convolution nor
        fused attention) on a device with a packing figure adds `pack_time` to its compute,
        and cold pays `memory_operand_time` for its operands; both may exceed those bounds.
        """
        cal = self.calibration
        compute = self.matrix_compute_time(flops, shape)
        if gemm:
            compute += self.pack_time(flops, shape, out_bytes)
        if self.cold:
            return compute + self.memory_operand_time(nbytes, gemm) + cal.launch_s
        store = (1.0 - cal.epilogue_overlap) * min(out_bytes, nbytes)
        return (max(compute, self.vector_time_raw(nbytes - store))
                + self.vector_time_raw(store) + cal.launch_s)

    def pack_time(self, flops: float, shape: tuple[int, int, int], out_bytes: float) -> float:
        """Seconds a GEMM of `flops` FLOP with output `shape` = (b, m, n) of `out_bytes` bytes
        spends beyond its multiplications on its largest matrix, `matrix_pack_byte_s` per byte
        of it (0 without the figure or a shape): b x max(m k, k n, m n) elements, k = flops /
        (2 b m n), at the output's element size. A BLAS copies the weight (k x n) into packed
        panels once per call, before its loop over m, and stores the output after its K loop:
        with few rows (a micro-batch's tokens) the copy is not amortised, with a short K
        (a weight gradient over few tokens) the store is not hidden (bench/gemm_pack.py: on
        a Zen 4 core, 0.09-0.23 ns per weight element whatever m, for weights up to 8 MB)."""
        per_byte = self.calibration.matrix_pack_byte_s
        b, m, n = shape
        if not per_byte or flops <= 0 or min(b, m, n) <= 0:
            return 0.0
        k = flops / (2 * b * m * n)
        size = out_bytes / (b * m * n) if out_bytes > 0 else 4.0
        return per_byte * size * b * max(m * k, k * n, m * n)

    def memory_operand_time(self, nbytes: float, gemm: bool = False) -> float:
        """Seconds a matrix op on a `cold` device spends on its `nbytes` operand bytes from
        memory beyond its multiplications: a GEMM's measured packing, `matrix_memory_call_s`
        + `matrix_memory_byte_s` x nbytes, where the calibration has them; else (and for a
        convolution or fused attention) the bytes at the memory bandwidth."""
        cal = self.calibration
        if gemm and (cal.matrix_memory_call_s or cal.matrix_memory_byte_s):
            return cal.matrix_memory_call_s + cal.matrix_memory_byte_s * nbytes
        return self.vector_time_raw(nbytes)

    def op_time(self, op: Any) -> float:
        """Seconds for one `OpCost` (convolutions run at `conv_efficiency` of the GEMM rate; on
        an eager device they add their fixed work, oneDNN's setup and their im2col columns, an
        exact GELU its oneDNN eltwise setup, and every op the dispatch of the `op.views` view
        ops issued before it, `launch_view_s` each)."""
        if self.timer is not None:
            return self.timer(op) + self.calibration.launch_s
        cal = self.calibration
        views = getattr(op, "views", 0) * cal.launch_view_s if cal.eager else 0.0
        if cal.eager and op.target in INNER_VIEWS:
            return views  # issued inside its caller's dispatch, and a view: no kernel
        return views + self.cold_code_time(op) + self._op_time(op)

    def _op_time(self, op: Any) -> float:
        if op.kind != "matrix":
            setup = (getattr(op, "eltwise_calls", 0) * self.calibration.eltwise_call_s
                     if self.calibration.eager else 0.0)
            return self.vector_time(op.bytes, op.flops) + self.eager_launches(op) + setup
        if "convolution" in op.target:
            cal = self.calibration
            setup = (getattr(op, "library_calls", 0) * cal.library_call_s + cal.conv_call_s
                     + getattr(op, "unfolded", 0) * cal.im2col_element_s
                     if cal.eager else 0.0)
            return setup + self.matrix_time(op.flops / self.calibration.conv_efficiency,
                                            op.bytes, op.shape, op.out_bytes)
        if self.attention is not None and is_fused_attention(op.target):
            return self.attention_time(self.attention, op.target, op.flops, op.bytes)
        scores = (getattr(op, "scores", 0.0) * self.calibration.attention_score_s
                  if self.calibration.eager else 0.0)
        return scores + self.matrix_time(op.flops, op.bytes, op.shape, op.out_bytes,
                                         gemm=not is_fused_attention(op.target))

    def attention_time(self, kernel: AttentionKernel, target: str, flops: float,
                       nbytes: float) -> float:
        """Seconds of the fused attention op `target` (counted `flops` FLOP, `nbytes` bytes)
        under `kernel`: max(its tensor-core time at the kernel's published rate, `nbytes` at
        the memory bandwidth) + launch (the kernel streams q, k, v and its output once,
        behind its matmuls)."""
        compute = attention_compute_time(kernel, target, flops, self.peak_flops)
        return max(compute, self.vector_time_raw(nbytes)) + self.calibration.launch_s

    def vector_time_raw(self, nbytes: float) -> float:
        return nbytes / (self.mem_bytes_per_s * self.calibration.vector_efficiency)

    def vector_time(self, nbytes: float, flops: float = 0.0) -> float:
        """Seconds for an elementwise/reduction op: bandwidth-bound (at the cache's bandwidth
        when its working set fits the calibrated cache), plus launch."""
        compute = flops / (self.vector_flops * self.calibration.vector_compute_efficiency)
        return max(self.stream_time(nbytes), compute) + self.calibration.launch_s

    def stream_time(self, nbytes: float) -> float:
        """Seconds to stream `nbytes` (read + written) through an elementwise kernel: from the
        cache when they fit `cache_bytes` and the device is not `cold`, else at the memory
        bandwidth. Non-decreasing in `nbytes` as long as the cache is faster than memory."""
        cal = self.calibration
        if (cal.cache_bytes and cal.cache_bytes_per_s and not self.cold
                and nbytes <= cal.cache_bytes):
            return nbytes / cal.cache_bytes_per_s
        return self.vector_time_raw(nbytes)

    def host_step_time(self, param_tensors: int, microbatches: int,
                       params: float = 0.0, modules: int = 0) -> float:
        """Seconds an eager step spends on one device outside its captured ops: the optimizer
        step's fixed cost, its cost per parameter tensor (zero_grad included), its walks over
        the model's `modules` nn.Modules (`model.train()`, `zero_grad`; every rank holds the
        whole model, `module_walk_s` each), and for every
        micro-batch after the first the gradient accumulation's adds over its `params` FP32
        gradients (`ACCUMULATE_BYTES` each, a tensor's add streaming its own working set).
        The adds cost no dispatch: autograd's AccumulateGrad node runs for the first
        micro-batch too (it then takes the new gradient), and the backward dispatch figure
        already holds it (bench/eager_stacks.accumulate_cost: ~0 us per tensor beyond the
        add's bytes). 0 on a device that is not eager. `param_tensors` is one device's count
        (`dojo.sim.eager.stage_param_tensors`)."""
        cal = self.calibration
        if not cal.eager:
            return 0.0
        accumulate = 0.0
        if param_tensors and microbatches > 1:
            per_tensor = ACCUMULATE_BYTES * params / param_tensors
            accumulate = (microbatches - 1) * param_tensors * self.stream_time(per_tensor)
        return (cal.optimizer_step_s + param_tensors * cal.optimizer_tensor_s
                + modules * cal.module_walk_s + accumulate)

    def for_phase(self, phase: str) -> DeviceModel:
        """The device as it times the ops of `phase`: on an eager device with a measured
        `launch_backward_s`, a backward op costs that dispatch (the autograd engine issues it
        from C++, its formula's views included: no `launch_view_s`) where forward and
        recompute ops (re-run from Python) pay `launch_s`."""
        cal = self.calibration
        if phase != "backward" or not cal.eager or not cal.launch_backward_s:
            return self
        return replace(self, calibration=replace(
            cal, launch_s=cal.launch_backward_s, launch_pointwise_s=cal.launch_pointwise_backward_s,
            launch_view_s=0.0,
            library_call_s=cal.library_call_backward_s, conv_call_s=cal.conv_call_backward_s,
            eltwise_call_s=cal.eltwise_call_backward_s, cold_call_s=cal.cold_call_backward_s,
            cold_matrix_s=cal.cold_matrix_backward_s,
            cold_pointwise_s=cal.cold_pointwise_backward_s,
            cold_library_s=cal.cold_library_backward_s,
            cold_eltwise_s=cal.cold_eltwise_backward_s,
            im2col_element_s=cal.im2col_element_backward_s,
            attention_score_s=cal.attention_score_backward_s))

    def eager_launches(self, op: Any) -> float:
        """Seconds of dispatch beyond the one `launch_s` of a vector op on an eager device (0
        elsewhere): a fused group `fused[N]` is one kernel to a compiler but N dispatched ops
        to eager PyTorch, less its `op.inner_views` (issued inside another op's dispatch), and
        its `op.pointwise` elementwise ops each cost `launch_pointwise_s` instead of `launch_s`
        (where that is measured)."""
        cal = self.calibration
        if not cal.eager:
            return 0.0
        fused = op.target.startswith("fused[")
        ops = int(op.target[len("fused["):-1]) - getattr(op, "inner_views", 0) if fused else 1
        extra = (ops - 1) * cal.launch_s
        if cal.launch_pointwise_s:
            extra += getattr(op, "pointwise", 0) * (cal.launch_pointwise_s - cal.launch_s)
        return extra

    def cold_code_time(self, op: Any) -> float:
        """Seconds the cold call sites of `op` (`op.cold_calls`, `op.cold_pointwise`:
        `dojo.compiler.code`) add to their dispatch: their `cold_*` figures (a matrix op's
        `cold_matrix_s`), and every oneDNN call's own (`cold_library_s` a convolution's,
        `cold_eltwise_s` an exact GELU's, repeats included), times `code_cold` (0 on a device
        whose step's code stays in its caches, or that is not eager)."""
        if not self.code_cold:
            return 0.0
        cal = self.calibration
        call = cal.cold_matrix_s if op.kind == "matrix" and cal.cold_matrix_s else cal.cold_call_s
        library = (getattr(op, "library_calls", 0) * cal.cold_library_s
                   + getattr(op, "eltwise_calls", 0) * cal.cold_eltwise_s)
        return self.code_cold * (getattr(op, "cold_calls", 0) * call + library
                                 + getattr(op, "cold_pointwise", 0) * cal.cold_pointwise_s)
