"""precision=fp8 on GPUs: FP8 GEMMs with per-tensor scaling, everything else in BF16.

As TransformerEngine runs a transformer layer in FP8 (its `Linear`/`LayerNormLinear`/
`LayerNormMLP` under `fp8_autocast`), the weight GEMMs of the repeated blocks run on the FP8
tensor cores, at the device's dense FP8 peak (`peak_flops.fp8` in the system file), reading
1-byte operands and writing BF16 outputs. Attention (the batched matmuls or the fused kernel),
norms, activations, the embedding, the head and the loss stay in BF16 (Megatron-LM's output layer
is not a TransformerEngine module). Models without repeated blocks run every weight GEMM in FP8.

Per-tensor current scaling (NeMo's FP8 recipe: the scale comes from this step's amax) costs
memory-bound vector kernels around each FP8 GEMM of a forward pass, with X its (m, k) input,
W its (k, n) weight and dY the (m, n) gradient of its output, on this device's tp split:
- forward: amax of X (read 2 bytes per element), then the cast that writes the FP8 data and the
  FP8 transpose the weight-gradient GEMM reads on Hopper (read 2, write 1 + 1): 6 m k bytes;
- backward: the same amax and cast-transpose of dY: 6 m n bytes;
- weights: amax and cast-transpose of W once per step (TransformerEngine caches the FP8 weight
  over a step's micro-batches): 6 k n bytes per step, a 1/m share per micro-batch.
Every cast is one kernel (its launch included). Memory: BF16 weights, FP32 master weights and
gradients as under bf16, plus the cached FP8 weight and its transpose (2 bytes per parameter),
or with `fp8_params` the FP8 weight and transpose alone (no BF16 copy; ZeRO gathers 1 byte per
parameter); activations as TransformerEngine keeps them, the linears' inputs in FP8
(`dojo.compiler.fp8`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import replace

from dojo.compiler.program import PRECISION_BYTES
from dojo.compiler.work import OpCost
from dojo.errors import DojoError
from dojo.hardware.spec import SystemSpec
from dojo.plan.plan import Plan
from dojo.plan.policies import op_class
from dojo.sim.costs import DeviceModel

CAST_BYTES_PER_ELEMENT = 6.0  # amax read (2) + cast read (2) + FP8 data and transpose (1 + 1)
FP8_CACHE_BYTES_PER_PARAM = 2.0  # the cached FP8 weight and its transpose


def gathered_weight_bytes(plan: Plan) -> float:
    """Bytes per parameter that ZeRO's parameter all-gather moves: the weights' dtype (1 byte
    with `fp8_params`, whose transpose each rank makes itself)."""
    return 1.0 if plan.fp8_params else float(PRECISION_BYTES[plan.precision]["weights"])


def fp8_peak(spec: SystemSpec) -> float:
    """The dense FP8 peak (FLOP/s) of one leaf; a one-line DojoError naming the system when it
    has no FP8 tensor cores (A100, Dojo's D1, which runs CFP8: precision=cfp8)."""
    peaks = spec.leaf.peak_flops
    if "fp8" not in peaks:
        raise DojoError(f"{spec.name} has no FP8 tensor cores (its peak rates: "
                        f"{', '.join(peaks)}): precision=fp8 needs a GPU with an fp8 peak "
                        "(h100-cluster, h200-cluster); use precision=bf16 here"
                        + (" or cfp8" if "cfp8" in peaks else ""))
    return peaks["fp8"]


def fp8_device(dev: DeviceModel, spec: SystemSpec, leaves: int = 1) -> DeviceModel:
    """`dev` (the BF16 device) with its matrix peak at the FP8 rate."""
    return replace(dev, peak_flops=fp8_peak(spec) * leaves)


def is_fp8_gemm(op: OpCost, block: frozenset[OpCost] | None,
                experts: frozenset[int] = frozenset()) -> bool:
    """A weight GEMM of known shape inside the repeated block (`block`: its ops; None for a
    model without one): a Linear (aten.mm / aten.addmm), or a routed experts' grouped GEMM (a
    batched matmul whose batch is one of `experts`, the experts on this device:
    TransformerEngine's GroupedLinear runs them in FP8 as it runs a Linear)."""
    if op.kind != "matrix" or min(op.shape) <= 0 or (block is not None and op not in block):
        return False
    kind = op_class(op.target)
    return (kind == "mm" and op.shape[0] == 1) or (kind == "bmm" and op.shape[0] in experts)


def as_fp8(op: OpCost) -> OpCost:
    """The GEMM reading FP8 operands: its inputs at 1 byte per element instead of BF16's 2,
    its output still BF16."""
    reads = op.bytes - op.out_bytes
    return replace(op, bytes=reads / 2 + op.out_bytes)


def gemm_dims(op: OpCost) -> tuple[float, float, float]:
    """(m, n, k) of each of the b GEMMs of output (b, m, n): k = FLOP / (2 b m n)."""
    b, m, n = op.shape
    return float(m), float(n), op.flops / (2.0 * b * m * n)


def cast_bytes(op: OpCost, phase: str) -> float:
    """Bytes the per-tensor scaling kernels of one forward FP8 GEMM move in `phase`: 'forward'
    (its input X), 'backward' (its output gradient dY) or 'weight' (its weight, once a step);
    a grouped GEMM of b experts casts each expert's X, dY and W: b times one GEMM's."""
    m, n, k = gemm_dims(op)
    elements = {"forward": m * k, "backward": m * n, "weight": k * n}[phase]
    return CAST_BYTES_PER_ELEMENT * elements * op.shape[0]


class Fp8Timer:
    """Times a chunk's op lists under precision=fp8 (see the module docstring)."""

    def __init__(self, dev: DeviceModel, dev8: DeviceModel, block: Iterable[OpCost] | None,
                 microbatches: int, experts: frozenset[int] = frozenset()) -> None:
        self.dev, self.dev8 = dev, dev8
        self.block = frozenset(block) if block is not None else None
        self.micro = max(1, microbatches)
        self.experts = experts   # batch sizes of the routed experts' grouped GEMMs

    def fp8(self, op: OpCost) -> bool:
        """Whether `op` runs on the FP8 tensor cores (`is_fp8_gemm`)."""
        return is_fp8_gemm(op, self.block, self.experts)

    def op_time(self, op: OpCost) -> float:
        """Seconds of one op: an FP8 GEMM at the FP8 rate, any other on the BF16 device."""
        return self.dev8.op_time(as_fp8(op)) if self.fp8(op) else self.dev.op_time(op)

    def ops_time(self, ops: Iterable[OpCost], dev: DeviceModel | None = None) -> float:
        """Seconds of `ops` (a chunk's op list): FP8 GEMMs at the FP8 rate on FP8 operands,
        every other op on `dev` (BF16; default the device given at construction)."""
        dev = dev or self.dev
        total = 0.0
        for op, count in Counter(ops).items():
            fp8 = self.fp8(op)
            total += count * (self.dev8.op_time(as_fp8(op)) if fp8 else dev.op_time(op))
        return total

    def cast_time(self, forward: Iterable[OpCost], phase: str) -> float:
        """Seconds of the scaling kernels of the FP8 GEMMs of a forward op list in `phase`:
        'forward' (inputs, and a 1/m share of the weights' once-a-step casts), 'recompute'
        (inputs again; the FP8 weights are cached) or 'backward' (output gradients)."""
        total = 0.0
        for op, count in Counter(forward).items():
            if not self.fp8(op):
                continue
            kind = "backward" if phase == "backward" else "forward"
            total += count * self.dev.vector_time(cast_bytes(op, kind))
            if phase == "forward":
                total += count * self.dev.vector_time(cast_bytes(op, "weight")) / self.micro
        return total

    def chunk_times(self, forward: tuple[OpCost, ...], backward: tuple[OpCost, ...],
                    recompute: tuple[OpCost, ...], dev_backward: DeviceModel
                    ) -> tuple[float, float, float]:
        """(forward, backward, recompute) seconds of one chunk per micro-batch, casts included."""
        fwd = self.ops_time(forward) + self.cast_time(forward, "forward")
        bwd = self.ops_time(backward, dev_backward) + self.cast_time(forward, "backward")
        rec = self.ops_time(recompute) + self.cast_time(recompute, "recompute")
        return fwd, bwd, rec
