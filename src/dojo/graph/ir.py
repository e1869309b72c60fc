"""The IR: one training step as immutable tensors, ops and repeated blocks.

Contract (see docs/ir.md for the full text):
- `Graph.ops` are in eager execution order, phases in the order forward, backward, optimizer.
- An op or tensor whose `block` names a `Block` belongs to that block's *template*: the graph holds
  one instance of the block and the step executes it `Block.repeat` times (forward in instance
  order 0..N-1, backward in reverse). Totals multiply template costs by `repeat`.
- Tensor ids are small integers, unique within the graph; `Graph.tensors[i].id == i`.
- Units: FLOP (a multiply-add is 2 FLOP), bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PHASES: tuple[str, ...] = ("forward", "backward", "optimizer")
ROLES: tuple[str, ...] = (
    "parameter",  # a trainable weight (graph input) or its updated value (optimizer output)
    "gradient",  # the final gradient of a parameter
    "optimizer_state",  # moments, momentum buffers (inputs and their updated values)
    "activation",  # anything else an op produces: activations, activation grads, temporaries
    "input",  # example inputs and targets of the step
    "buffer",  # non-trainable module state (batch-norm statistics, frozen weights, constants)
)


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor value of the step.

    `bytes` is numel x itemsize of this tensor's view. `view_of` is the id of the tensor that owns
    the storage when this tensor is a view or an in-place result (aliases cost no new memory).
    `name` is the parameter/buffer name for model state, else "".
    """

    id: int
    shape: tuple[int, ...]
    dtype: str
    role: str
    bytes: int
    view_of: int | None = None
    name: str = ""
    block: str | None = None


@dataclass(frozen=True, slots=True)
class Op:
    """One ATen op of the step.

    `target` is the ATen overload, e.g. "aten.mm.default". `flops` in FLOP, `bytes_read` and
    `bytes_written` in bytes (views read and write nothing). `rule` names the formula that gave
    `flops` (see dojo.capture.costs and docs/ir.md); "unknown" means no formula applied and the op
    is counted as 0 FLOP, never dropped. `layer` is the innermost module path for forward ops when
    known.
    """

    id: int
    target: str
    phase: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    flops: int
    bytes_read: int
    bytes_written: int
    rule: str
    block: str | None = None
    layer: str | None = None


@dataclass(frozen=True, slots=True)
class Block:
    """A block captured once and executed `repeat` times.

    `carry` lists (carry_in, carry_out) tensor-id pairs: in each execution after the first, the
    template's references to `carry_in` mean the previous execution's `carry_out` (the residual
    stream in forward, its gradient in backward). `param_bytes` is one instance's parameter bytes.
    """

    name: str
    repeat: int
    carry: tuple[tuple[int, int], ...]
    param_bytes: int
    params: int


@dataclass(frozen=True, slots=True)
class Graph:
    """A whole training step: forward, backward and optimizer update (see module docstring)."""

    name: str
    tensors: tuple[TensorInfo, ...]
    ops: tuple[Op, ...]
    blocks: tuple[Block, ...] = ()
    meta: tuple[tuple[str, str], ...] = field(default=())

    def block(self, name: str) -> Block:
        """The block called `name`; KeyError if there is none."""
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(name)

    def repeat_of(self, block: str | None) -> int:
        """How many times an op or tensor tagged `block` executes or exists (1 outside blocks)."""
        return 1 if block is None else self.block(block).repeat

    def phase_ops(self, phase: str) -> tuple[Op, ...]:
        return tuple(op for op in self.ops if op.phase == phase)
