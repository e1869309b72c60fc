"""The calibration of a device kind: its efficiencies (fractions of peak) and fixed costs.

A system file names one (`cost_model = "h100"` on its leaf) and may override its fields
(`[gpu.calibration]`, and per software stack `[gpu.stacks.NAME]`). The schema lives here, with
the hardware, so that loading a system checks the name and every override, whatever command
loads it; the simulator's cost models (`dojo.sim.costs`) time ops with it. The shipped
calibrations are data files in `dojo/sim/calibration/*.toml` (where bench/calibrate_cpu.py and
bench/calibrate_gpu.py write them), read here as files without importing `dojo.sim`.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from importlib.resources.abc import Traversable

from dojo.config import check, parse
from dojo.errors import UnknownNameError


def _folder() -> Traversable:
    """The shipped calibrations' folder (package data of `dojo.sim`, read as files)."""
    return resources.files("dojo") / "sim" / "calibration"


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """Efficiencies of one device kind (fractions of peak) and fixed costs (seconds)."""

    name: str
    matrix_efficiency: float = field(metadata=check(gt=0, le=1))
    matrix_half_flops: float = field(metadata=check(ge=0, unit="FLOP"))
    vector_efficiency: float = field(metadata=check(gt=0, le=1))
    launch_s: float = field(metadata=check(ge=0, unit="s"))
    link_efficiency: float = field(metadata=check(gt=0, le=1))
    collective_latency_s: float = field(metadata=check(ge=0, unit="s"))
    idle_fraction: float = field(default=0.25, metadata=check(ge=0, le=1))
    conv_efficiency: float = field(default=1.0, metadata=check(gt=0, le=1))
    # Output tile of the large GEMM kernels; with the device's compute units this gives wave
    # quantisation (0 = not modelled).
    tile_m: int = field(default=0, metadata=check(ge=0))
    tile_n: int = field(default=0, metadata=check(ge=0))
    # Fraction of a GEMM's output store hidden behind tensor-core work. A non-persistent kernel
    # (one output tile per thread block: cuBLAS/CUTLASS 2 on Ampere) stores its tile after its
    # K loop, so the store adds to the time (0); a ping-pong persistent kernel overlaps one
    # tile's epilogue with the next tile's math (1). 1 = plain roofline.
    epilogue_overlap: float = field(default=1.0, metadata=check(ge=0, le=1))
    # Working sets up to `cache_bytes` (read + written by one op) stream at `cache_bytes_per_s`
    # instead of the memory bandwidth: a CPU's small tensors live in its caches (0 = off).
    cache_bytes: float = field(default=0.0, metadata=check(ge=0, unit="B"))
    cache_bytes_per_s: float = field(default=0.0, metadata=check(ge=0, unit="B/s"))
    # What a GEMM (a BLAS call: not a convolution, not fused attention) spends per byte of its
    # largest matrix beyond its multiplications, operands in the caches: the BLAS packs its
    # weight once per call and stores its output (`DeviceModel.pack_time`,
    # bench/gemm_pack.py; 0 = folded into `matrix_half_flops`).
    matrix_pack_byte_s: float = field(default=0.0, metadata=check(ge=0, unit="s/B"))
    # What such a GEMM pays when its operands come from memory, a pass that outgrows
    # `cache_bytes` (`DeviceModel.cold`), in place of its bytes at the memory bandwidth: per
    # call, and per byte it reads and writes. Its packing copies walk short strided rows that
    # the prefetchers hide less well than a stream (bench/gemm_cold.py; 0 and 0 = the bytes at
    # the memory bandwidth).
    matrix_memory_call_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    matrix_memory_byte_s: float = field(default=0.0, metadata=check(ge=0, unit="s/B"))
    # The device runs dojo's eager runtime (`dojo run`): no fusing compiler, so a fused group of
    # N captured ops is N kernels, each paying `launch_s` (the eager dispatch of one op, paid in
    # series with its kernel on a CPU), whatever the plan's fusion.
    eager: bool = False
    # Dispatch of one op that autograd's engine issues in the backward (C++, no module call) on
    # an eager device; `launch_s` is then a forward op's, issued from Python module code
    # (0 = the same as `launch_s`). See `DeviceModel.for_phase`.
    launch_backward_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    # Dispatch of one elementwise op (capture rule "pointwise": mul, add, rsqrt, SiLU...) on an
    # eager device, forward and backward: a functional call with no module around it, where
    # `launch_s` / `launch_backward_s` hold the other ops' (0 = the same as those).
    launch_pointwise_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    launch_pointwise_backward_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    # Dispatch of one forward view op (capture rule "view": view, t, transpose, expand,
    # detach...) on an eager device: no kernel, but a call through the dispatcher and
    # autograd's view tracking, issued by module code or a composite op (linear's `t`);
    # counted per op as `OpCost.views` (0 = views cost nothing, as on a device whose compiler
    # folds them into its kernels' indexing). The backward's views, mostly issued inside
    # other ops' formulas, stay in `launch_backward_s` (bench/eager_stacks.eager_op_times).
    launch_view_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    # Setup of one call into a kernel library that prepares its primitive and reorders its
    # operands on every call (oneDNN's convolutions, `dojo.compiler.eager_cpu`), forward and
    # backward, on an eager device; counted per op as `OpCost.library_calls` (0 = none).
    library_call_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    library_call_backward_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    # Setup of one oneDNN eltwise call (an exact GELU, forward and backward,
    # `dojo.compiler.eager_cpu.eltwise_calls`) on an eager CPU, beyond the op's dispatch and
    # its elements' work; counted per op as `OpCost.eltwise_calls` (0 = none).
    eltwise_call_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    eltwise_call_backward_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    # What a cold call site costs beyond `launch_s` / `launch_pointwise_s`, forward and
    # backward (`dojo.compiler.code`: the first op of each call site in a pass, when the step's
    # code does not stay in the core's caches), on an eager device: a matrix op's (a GEMM
    # library's, a convolution's, attention's code), another op's, an elementwise op's
    # (0 = none; a matrix op without its own figure takes `cold_call_s`).
    cold_matrix_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    cold_matrix_backward_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    cold_call_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    cold_call_backward_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    cold_pointwise_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    cold_pointwise_backward_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    # What a oneDNN call costs cold beyond its op's own cold figure, forward and backward,
    # on an eager CPU: a convolution's (`OpCost.library_calls`) and an exact GELU's eltwise
    # call (`OpCost.eltwise_calls`). Each primitive runs JIT code and set-up of its own
    # (ideep, the primitive cache, reorders), which the rest of a step evicts, so every call
    # pays it where the step's code does not stay in the caches, a repeat of its call site
    # too (bench/code_costs.py `library_cold`; 0 = none).
    cold_library_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    cold_library_backward_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    cold_eltwise_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    cold_eltwise_backward_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    # What one tensor-parallel region (Megatron's f or g around an all-reduce, `tp_region_s`)
    # costs cold beyond that figure, its two phases together, on an eager CPU: its autograd
    # function's Python forward and backward and the clone, evicted by the rest of a step
    # like any call site's code (bench/code_costs.py `library_cold`; 0 = none).
    cold_region_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    # Distinct call sites a step runs (`dojo.compiler.code.section_keys`) up to which its
    # code stays hot, and from which all of it is cold between two passes; in between, the
    # cold share grows linearly (`dojo.sim.eager.code_in_cache`). 0 and 0: always cold.
    code_keys_hot: float = field(default=0.0, metadata=check(ge=0))
    code_keys_cold: float = field(default=0.0, metadata=check(ge=0))
    # A convolution's own fixed work per call on an eager CPU beyond one op's dispatch, forward
    # and backward, whatever its backend (the im2col path allocates, zeroes and unfolds a
    # columns buffer and runs three small GEMMs per backward call; oneDNN's setup,
    # `library_call_s`, comes on top of it): 0 = none.
    conv_call_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    conv_call_backward_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    # Per element of the columns matrix an im2col-path convolution unfolds (`OpCost.unfolded`,
    # `dojo.compiler.eager_cpu`) on an eager CPU: the forward's unfolding copy, and the
    # backward's unfolding for the weight gradient with its folding of the input gradient
    # (0 = none).
    im2col_element_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    im2col_element_backward_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    # Per attention score element PyTorch's CPU flash attention computes (`OpCost.scores`,
    # `dojo.compiler.eager_cpu.attention_scores`) on an eager CPU, beyond its FLOPs at the GEMM
    # rate: the forward's scale, max, exp and sums, the backward's recomputed probabilities and
    # their gradient (0 = none).
    attention_score_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    attention_score_backward_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    # The counted FLOPs of vector ops (elementwise, norms, softmax, reductions) run at this
    # fraction of the device's FP32 peak: one CPU core evaluates erf, exp and rsqrt element by
    # element far below its FMA rate, where a GPU's vector units keep up with memory (1).
    vector_compute_efficiency: float = field(default=1.0, metadata=check(gt=0, le=1))
    # Host time of an eager step outside its ops (see `host_step_time`): the fused optimizer
    # step's fixed part and its part per parameter tensor, zero_grad included (0 = none).
    optimizer_step_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    optimizer_tensor_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    # Host time per nn.Module of the model an eager step spends walking it, whatever the
    # module holds: `model.train()` and `zero_grad`'s recursion over the modules (0 = none).
    module_walk_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    # Host time of the eager runtime's data-parallel gradient sync outside the collective:
    # packing the gradients into one flat buffer and unpacking them (`dojo.sim.eager`), its
    # fixed part and its part per parameter tensor (0 = none).
    grad_sync_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    grad_sync_tensor_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    # Host time of the eager runtime's multi-rank plans beyond the transfers (`dojo.sim.eager`):
    # Megatron's f/g autograd functions and clone around one tp all-reduce (both phases), the
    # posting of one pipeline send, and what one blocking wait on another rank costs the
    # stepping thread's next work (it resumes with cold caches). 0 = none.
    tp_region_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    p2p_post_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    wait_resume_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    # Host time per micro-batch (forward and backward) of the runtime's vocabulary-parallel
    # embedding and cross entropy beyond the plain lookup and loss the program captures, their
    # collectives no-ops (`dojo.sim.eager.vocab_host`): masks, offsets, the loss's max, shift,
    # gather, exp, sums and log in an autograd function. 0 = none.
    tp_vocab_embedding_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    tp_vocab_loss_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    # Two eager ranks running the same work and then a blocking collective, over and over
    # (`dojo.sim.eager.wait_time`): the wall each collective costs beyond its transfer at no
    # work between (gloo's threads hand the message from thread to thread, each waking up),
    # and the jitter of a rank's work: after w seconds of it the two ranks arrive apart by a
    # spread that grows as a random walk does, sqrt(w), so the first to arrive waits
    # `lockstep_jitter` x sqrt(w) on average (seconds^0.5); and after any work, the wake-up
    # of the rank that arrived first and slept (`lockstep_wake_s`: back-to-back collectives
    # find their peer there and never sleep). All 0 = not measured: `wait_resume_s` per wait
    # instead.
    lockstep_wait_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    lockstep_jitter: float = field(default=0.0, metadata=check(ge=0, le=1))
    lockstep_wake_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    # SMs the communication kernels of a tensor-parallel collective overlapped with a GEMM hold
    # (TransformerEngine's userbuffers: ring-exchange all-gathers, pipelined reduce-scatters);
    # the GEMM runs without them meanwhile (`dojo.sim.overlap`). 0 = no contention.
    overlap_sms_all_gather: float = field(default=0.0, metadata=check(ge=0))
    overlap_sms_reduce_scatter: float = field(default=0.0, metadata=check(ge=0))
    # Fixed seconds per training step outside the modelled work (data loader, logging, the
    # host's synchronisation at the step boundary); fitted by `dojo calibrate` (0 = none).
    step_overhead_s: float = field(default=0.0, metadata=check(ge=0, unit="s"))
    source: str = ""


def calibration_names() -> list[str]:
    folder = _folder()
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir()
                  if p.name.endswith(".toml"))


@functools.cache
def load_calibration(name: str) -> Calibration:
    """The shipped calibration called `name` (a device kind: a100, h100, d1, cpu...); read once
    per process (it is frozen, and a plan search times hundreds of programs)."""
    if name not in calibration_names():
        raise UnknownNameError("cost model", name, calibration_names())
    path = _folder() / f"{name}.toml"
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return parse(Calibration, data, f"sim/calibration/{name}.toml")


@functools.cache
def _calibration_with(name: str, overrides: tuple[tuple[str, float], ...], source: str,
                      prefix: str) -> Calibration:
    base = load_calibration(name)
    if not overrides:
        return base
    data = {f.name: getattr(base, f.name) for f in fields(base)}
    data.update(overrides)
    return parse(Calibration, data, source, prefix)


def calibration_with(name: str, overrides: Mapping[str, float], source: str = "",
                     prefix: str = "calibration") -> Calibration:
    """The shipped calibration `name` with a system file's `overrides` of its fields applied
    and checked (ConfigError naming `source` and `prefix`.field); the shipped object itself
    when there are none. Memoised: the same overrides give the same object."""
    items = tuple(sorted(overrides.items()))
    return _calibration_with(name, items, source or f"calibration {name}", prefix)
