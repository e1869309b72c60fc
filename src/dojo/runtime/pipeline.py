"""Pipeline parallelism: the model cut into the program's chunks, run with send/recv.

A block-structured model is described by a `Layout` (registered per model class in `LAYOUTS`):
what runs before the repeated blocks (`pre`, e.g. embeddings), the block list, and what runs
after (`post`, e.g. final norm and head). Chunk v of the program (`Program.chunks[v].blocks`
blocks, in order) runs on stage v % pp; chunk 0 also runs `pre`, the last chunk `post`.

Schedules: each stage executes exactly the task order the simulator times,
`dojo.sim.pipeline.order(schedule, stage, pp, micro, interleave)` (GPipe, 1F1B, Megatron's
interleaved 1F1B), whose local chunk c on stage s is virtual stage v = c * pp + s. The executed
order is recorded (`PipelineStep.executed`) so tests compare it with the simulator's.

Why the send/recv pattern cannot deadlock: a task blocks only on the one input it needs (the
activation of F(v-1, m), or the gradient of B(v+1, m)), whose receive was posted a few tasks
ahead (irecv, `PipelineStep.lookahead`: gloo sends a message's bytes only once the sender has
seen the receive posted) and is waited for when the task starts; every send is non-blocking
(isend, waited for at the end of the step) and carries a tag unique to (chunk, micro-batch,
direction), so a message never matches the wrong receive and a stage never waits on its own
send. That is the simulator's device model (a task starts when its device is
free and its input has arrived; nothing else blocks), under which `run_pipeline` checks that every
schedule completes; so an order that completes in the simulator completes here. (Batched
`batch_isend_irecv` pairs would force both peers to post matching pairs at the same point of
their orders, which the interleaved order does not do.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dojo.errors import DojoError
from dojo.registry import Registry
from dojo.sim.pipeline import order


@dataclass(frozen=True)
class Layout:
    """How to run a block-structured model piecewise. `pre(model, *inputs) -> x`;
    `post(model, x) -> outputs`; `pre_modules`/`post_modules` name the attributes whose
    parameters those pieces use (a module in both is tied: its gradient is summed across the
    first and last stage)."""

    pre: Callable[..., Tensor]
    post: Callable[[nn.Module, Tensor], Tensor]
    pre_modules: tuple[str, ...]
    post_modules: tuple[str, ...]
    blocks: str = "blocks"


LAYOUTS: Registry[Layout] = Registry("pipeline layout")


def _gpt_pre(model: Any, tokens: Tensor) -> Tensor:
    pos = torch.arange(tokens.shape[1], device=tokens.device)  # (S,)
    return model.wte(tokens) + model.wpe(pos)  # (B, S, H)


def _gpt_post(model: Any, x: Tensor) -> Tensor:
    from dojo.runtime.vocab_parallel import head_context

    with head_context(model):
        return nn.functional.linear(model.ln_f(x), model.wte.weight)  # (B, S, V), tied head


LAYOUTS.add("GPT", Layout(pre=_gpt_pre, post=_gpt_post, pre_modules=("wte", "wpe"),
                          post_modules=("ln_f", "wte")))
def _llama_pre(model: Any, tokens: Tensor) -> Tensor:
    return model.embed(tokens)  # (B, S, H)


def _llama_post(model: Any, x: Tensor) -> Tensor:
    from dojo.runtime.vocab_parallel import head_context

    with head_context(model):  # under tp and sp: the head's input kept as a slice
        return model.output(model.norm(x))  # (B, S, V)


LAYOUTS.add("Llama", Layout(pre=_llama_pre, post=_llama_post, pre_modules=("embed",),
                            post_modules=("norm", "output")))


def _moe_pre(model: Any, tokens: Tensor) -> Tensor:
    x = model.embed(tokens)  # (B, S, H)
    for block in model.dense.values():  # the dense layers ride with the embedding
        x = block(x)
    return x


LAYOUTS.add("MoEDecoder", Layout(pre=_moe_pre, post=_llama_post, pre_modules=("embed", "dense"),
                                 post_modules=("norm", "output")))


def layout_of(model: nn.Module, pp: int) -> Layout:
    """The layout of `model`; DojoError naming the class when it cannot be pipelined."""
    name = type(model).__name__
    if name not in LAYOUTS:
        raise DojoError(f"pipeline parallelism (pp={pp}) needs a block-structured model "
                        f"({', '.join(LAYOUTS.names())}); {name} runs with dp only")
    return LAYOUTS.get(name)


def chunk_ranges(blocks_per_chunk: Sequence[int]) -> list[range]:
    """Block index range of each chunk, from the program's per-chunk block counts."""
    out, start = [], 0
    for n in blocks_per_chunk:
        out.append(range(start, start + n))
        start += n
    return out


def run_chunk(model: nn.Module, layout: Layout, v: int, last: int, ranges: list[range],
              x: Any) -> Tensor:
    """Chunk v's forward: `x` is the model inputs (tuple) for chunk 0, else the activation."""
    if v == 0:
        x = layout.pre(model, *x)
    blocks = getattr(model, layout.blocks)
    for i in ranges[v]:
        x = blocks[i](x)
    return layout.post(model, x) if v == last else x


def schedule_tasks(kind: str, stage: int, pp: int, interleave: int, micro: int,
                   group: int = 0) -> list[tuple[str, int, int]]:
    """This stage's tasks in the simulator's order (`dojo.sim.pipeline.order`, `group`
    micro-batches per virtual stage at a time, 0: pp), as ("F" or "B", virtual stage v,
    micro-batch)."""
    return [(k, c * pp + stage, m)
            for k, m, c in order(kind, stage, pp, micro, interleave, group)]


@dataclass
class PipelineStep:
    """One step's pipeline work on this rank. `stage_rank(v)` gives the global rank
    running chunk v; `shape` is the activation shape of one micro-batch (sequence-sharded under
    sp); `executed` records the tasks run, as the simulator writes them: (kind, micro, chunk)."""

    model: nn.Module
    layout: Layout
    ranges: list[range]
    stage_rank: Callable[[int], int]
    shape: tuple[int, ...]
    micro: int
    pp: int
    loss_fn: Callable[..., Tensor]
    executed: list[tuple[str, int, int]] = field(default_factory=list)

    def run(self, tasks: list[tuple[str, int, int]], inputs: list[tuple[Tensor, ...]],
            targets: list[tuple[Tensor, ...]]) -> Tensor:
        """Execute `tasks`; returns the summed (already 1/micro scaled) loss, 0 off the last
        stage. Gradients accumulate in the parameters."""
        import torch.distributed as dist

        last = len(self.ranges) - 1
        saved: dict[tuple[int, int], tuple[Tensor | None, Tensor]] = {}
        pending: list[Any] = []
        total = torch.zeros(())
        posted: dict[tuple[str, int, int], tuple[Tensor, Any]] = {}
        for i, (kind, v, m) in enumerate(tasks):
            self._post_receives(tasks[i:i + self.lookahead], last, posted)
            self.executed.append((kind, m, v // self.pp))  # the simulator's (kind, micro, chunk)
            if kind == "F":
                x: Any = inputs[m]
                if v > 0:
                    x, work = posted.pop((kind, v, m))
                    work.wait()
                    x.requires_grad_(True)
                y = run_chunk(self.model, self.layout, v, last, self.ranges, x)
                if v == last:
                    y = self.loss_fn(y, *targets[m]) / self.micro
                    total = total + y.detach()
                else:
                    pending.append(dist.isend(y.detach().contiguous(), dst=self.stage_rank(v + 1),
                                              tag=self._tag(v + 1, m, 0)))
                saved[(v, m)] = (x if v > 0 else None, y)
            else:
                x_in, y = saved.pop((v, m))
                if v == last:
                    y.backward()
                else:
                    dy, work = posted.pop((kind, v, m))
                    work.wait()
                    y.backward(dy)
                if v > 0 and x_in is not None:
                    grad = x_in.grad if x_in.grad is not None else torch.zeros(self.shape)
                    pending.append(dist.isend(grad.contiguous(), dst=self.stage_rank(v - 1),
                                              tag=self._tag(v - 1, m, 1)))
        for work in pending:
            work.wait()
        return total

    @property
    def lookahead(self) -> int:
        """Tasks ahead whose receives are posted (see `_post_receives`): a stage's peers run
        ahead of it by at most one warm-up of the schedule (2 x virtual stages tasks), so
        posting that far keeps every receive ahead of its send while the buffers in flight
        stay bounded by the schedule, not by the number of micro-batches."""
        return 2 * len(self.ranges) + 2

    def _post_receives(self, tasks: list[tuple[str, int, int]], last: int,
                       posted: dict[tuple[str, int, int], tuple[Tensor, Any]]) -> None:
        """Post the receives of `tasks` not yet in `posted`, adding (buffer, work) under each
        task. Gloo moves a message's bytes only once the sender has seen the receiver's
        notice that its receive is posted: a receive posted after the send waits for the
        sender's event loop, which runs only where a core is idle while the sender computes
        (`dojo.runtime.gloothreads`), up to the sender's next wait (measured:
        docs/benchmarks.md, eighteenth round)."""
        import torch.distributed as dist

        for task in tasks:
            kind, v, m = task
            if task in posted or not ((kind == "F" and v > 0) or (kind == "B" and v < last)):
                continue
            src, direction = (v - 1, 0) if kind == "F" else (v + 1, 1)
            buf = torch.empty(self.shape)
            posted[task] = (buf, dist.irecv(buf, src=self.stage_rank(src),
                                            tag=self._tag(v, m, direction)))

    def _tag(self, v: int, m: int, direction: int) -> int:
        return (v * self.micro + m) * 2 + direction
