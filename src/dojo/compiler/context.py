"""Context parallelism: ring attention over `cp` ranks, as Megatron-LM and TransformerEngine run it.

Each rank of a cp group holds seq/cp tokens of every sequence: the sequence is cut into 2 cp
chunks and rank r keeps chunks r and 2 cp - 1 - r, so that under a causal mask every rank has the
same attention work. Everything outside attention (matmuls, norms, the residual stream, the
activations kept for backward) is per token, so it is the work of a seq/cp capture. Attention
needs every earlier key: in cp steps the rank's queries meet each rank's K and V block once, the
blocks passing around the ring, and step i's transfer (the block for step i + 1) runs beside
step i's attention. With the balanced layout each step is the same work, 1/cp of the rank's
attention, and the rank's attention is 1/cp of the whole causal attention: cp times the attention
of the seq/cp capture (whose causal diagonal is one step's work).

Closed forms, per rank, per layer, per micro-batch of b samples, in bytes (the rank's tp shard of
the kv heads, `kv_heads / tp`, of `head_dim`, at `item` bytes per element):
- block = 2 (K and V) x seq/cp x kv_heads/tp x head_dim x item x b;
- forward: (cp - 1) blocks sent (and as many received);
- backward: (cp - 1) x 2 blocks: K, V again and their gradients dK, dV travelling back;
- receive buffers, double-buffered: 2 x (K,V + dK,dV) = 4 blocks, held during one layer's
  attention (added once to the peak);
- exposed seconds per layer = (cp - 1) x max(0, transfer - step compute).
With `cp_comm=allgather` (Megatron-LM's all-gather type; Llama 3's "all-gather based method")
the same blocks move in one all-gather of K, V before attention, and in backward another and a
reduce-scatter of dK, dV, each exposed; the rank holds all cp blocks of K, V and of dK, dV while
a layer's attention runs (2 cp blocks).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from dojo.compiler.mapping import GroupLevel
from dojo.compiler.work import ModelWork, OpCost, SectionWork
from dojo.errors import ConfigError

BUFFERS = 4  # K,V and dK,dV blocks, each double-buffered


@dataclass(frozen=True)
class Ring:
    """The ring attention of one rank: `cp` members on `levels`, one layer's block of K and V
    (`block_bytes`, one micro-batch) and the attention kernels of one ring step (`forward`,
    `backward`: those of the seq/cp capture, on this device)."""

    cp: int
    block_bytes: float
    comm: str          # "p2p" (ring) or "allgather"
    levels: tuple[GroupLevel, ...]
    forward: tuple[OpCost, ...]
    backward: tuple[OpCost, ...]

    @property
    def forward_bytes(self) -> float:
        """Bytes one rank sends per layer in the forward: cp - 1 blocks."""
        return (self.cp - 1) * self.block_bytes

    @property
    def backward_bytes(self) -> float:
        """Bytes one rank sends per layer in the backward: K, V and dK, dV, cp - 1 steps."""
        return 2 * (self.cp - 1) * self.block_bytes

    @property
    def buffer_bytes(self) -> float:
        """Buffers held while a layer's attention runs: double-buffered K,V and dK,dV blocks
        (p2p), or all cp blocks of K,V and of dK,dV (allgather)."""
        if self.cp == 1:
            return 0.0
        return (2 * self.cp if self.comm == "allgather" else BUFFERS) * self.block_bytes


def local_seq(seq: int, cp: int, source: str = "--plan") -> int:
    """Tokens per rank, seq / cp; the sequence must cut into 2 cp equal chunks."""
    if seq % (2 * cp):
        raise ConfigError(source, "cp", cp,
                          f"a sequence that cuts into 2 x cp = {2 * cp} equal chunks (causal load "
                          f"balancing): seq {seq} / {2 * cp} = {seq / (2 * cp):g}")
    return seq // cp


def is_core(op: OpCost) -> bool:
    """An attention kernel that runs once per ring step: the fused attention (forward or
    backward), or, where attention runs unfused, its batched matmuls."""
    return op.kind == "matrix" and ("attention" in op.target or "bmm" in op.target)


def ring_work(work: ModelWork, cp: int, tp: int) -> ModelWork:
    """The work of one cp rank from the work of a seq/cp capture (`work`, one tp rank): every
    attention kernel runs cp times (once per ring step), the rest as captured. The whole-model
    FLOP become those of the full sequence: cp x (F + (cp - 1) x A), A the attention FLOP."""
    if cp == 1:
        return work
    sections = [work.pre, work.post] + ([work.block] if work.block else [])
    counts = [1, 1, work.repeat]
    core_f = sum(n * o.flops for s, n in zip(sections, counts) for o in s.forward if is_core(o))
    core_b = sum(n * o.flops for s, n in zip(sections, counts) for o in s.backward if is_core(o))
    return replace(work, pre=_ring_section(work.pre, cp), post=_ring_section(work.post, cp),
                   block=_ring_section(work.block, cp) if work.block else None,
                   forward_flops=cp * (work.forward_flops + (cp - 1) * core_f * tp),
                   backward_flops=cp * (work.backward_flops + (cp - 1) * core_b * tp))


def _ring_section(sec: SectionWork, cp: int) -> SectionWork:
    def steps(ops: tuple[OpCost, ...]) -> tuple[OpCost, ...]:
        return tuple(o for op in ops for o in ([op] * cp if is_core(op) else [op]))

    return replace(sec, forward=steps(sec.forward), backward=steps(sec.backward),
                   recompute_selective=steps(sec.recompute_selective))


def ring_of(work: ModelWork, cp: int, levels: tuple[GroupLevel, ...], kv_width: int,
            tokens: int, mb: int, item: float, comm: str = "p2p") -> Ring | None:
    """The ring of a rank whose `work` is `ring_work` of a seq/cp capture: `tokens` = seq/cp
    per sample, `kv_width` = kv_heads/tp x head_dim elements per token, `item` bytes per
    element. None without context parallelism."""
    if cp == 1:
        return None
    block = work.block or work.pre
    # ring_work repeats each attention kernel cp times in a row: one of each is one step
    return Ring(cp=cp, block_bytes=2.0 * tokens * kv_width * item * mb, comm=comm,
                levels=levels, forward=tuple(o for o in block.forward if is_core(o))[::cp],
                backward=tuple(o for o in block.backward if is_core(o))[::cp])


def exposed(steps: int, transfer_s: float, compute_s: float) -> float:
    """Seconds a ring of `steps` transfers adds beyond its compute: each transfer runs beside one
    step's attention (`compute_s`), so only max(0, transfer - compute) per step shows."""
    return steps * max(0.0, transfer_s - compute_s)
