"""Pipeline parallelism: the model cut into the program's chunks, run with send/recv.

A block-structured model is described by a `Layout` (registered per model class in `LAYOUTS`):
what runs before the repeated blocks (`pre`, e.g. embeddings), the block list, and what runs
after (`post`, e.g. final norm and head). Chunk v of the program (`Program.chunks[v].blocks`
blocks, in order) runs on stage v % pp; chunk 0 also runs `pre`, the last chunk `post`.

Schedules (per stage, a list of forward/backward tasks over (chunk, micro-batch)):
- gpipe: every forward, then every backward.
- 1f1b: warm-up of pp - stage - 1 forwards, then one forward / one backward, then cool-down.
- interleaved: several chunks per stage, run as GPipe over the virtual stages (all forwards in
  chunk order, then all backwards in reverse), which is correct and deadlock-free but does not
  reproduce Megatron's interleaved 1F1B order (the simulator times that one).
Sends are non-blocking (isend) and every message carries a tag unique to (chunk, micro-batch,
direction), so a stage never waits on a message that its peer can only send later.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dojo.errors import DojoError
from dojo.registry import Registry


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
    return nn.functional.linear(model.ln_f(x), model.wte.weight)  # (B, S, V), tied head


LAYOUTS.add("GPT", Layout(pre=_gpt_pre, post=_gpt_post, pre_modules=("wte", "wpe"),
                          post_modules=("ln_f", "wte")))
def _llama_pre(model: Any, tokens: Tensor) -> Tensor:
    return model.embed(tokens)  # (B, S, H)


def _llama_post(model: Any, x: Tensor) -> Tensor:
    return model.output(model.norm(x))  # (B, S, V)


LAYOUTS.add("Llama", Layout(pre=_llama_pre, post=_llama_post, pre_modules=("embed",),
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


def schedule_tasks(kind: str, stage: int, pp: int, interleave: int, micro: int
                   ) -> list[tuple[str, int, int]]:
    """This stage's tasks in order: ("F" or "B", chunk, micro-batch)."""
    chunks = [stage + k * pp for k in range(interleave)]
    if kind == "1f1b" and interleave == 1:
        warm = min(pp - stage - 1, micro)
        tasks = [("F", stage, m) for m in range(warm)]
        for m in range(micro - warm):
            tasks += [("F", stage, warm + m), ("B", stage, m)]
        return tasks + [("B", stage, m) for m in range(micro - warm, micro)]
    fwd = [("F", v, m) for v in chunks for m in range(micro)]
    return fwd + [("B", v, m) for v in reversed(chunks) for m in range(micro)]


@dataclass
class PipelineStep:
    """One step's pipeline work on this rank. `send_to(v)`/`recv_from(v)` give the global rank
    running chunk v; `shape` is the activation shape of one micro-batch."""

    model: nn.Module
    layout: Layout
    ranges: list[range]
    stage_rank: Callable[[int], int]
    shape: tuple[int, ...]
    micro: int
    loss_fn: Callable[..., Tensor]

    def run(self, tasks: list[tuple[str, int, int]], inputs: list[tuple[Tensor, ...]],
            targets: list[tuple[Tensor, ...]]) -> Tensor:
        """Execute `tasks`; returns the summed (already 1/micro scaled) loss, 0 off the last
        stage. Gradients accumulate in the parameters."""
        import torch.distributed as dist

        last = len(self.ranges) - 1
        saved: dict[tuple[int, int], tuple[Tensor | None, Tensor]] = {}
        pending: list[Any] = []
        total = torch.zeros(())
        for kind, v, m in tasks:
            if kind == "F":
                x: Any = inputs[m]
                if v > 0:
                    x = torch.empty(self.shape)
                    dist.recv(x, src=self.stage_rank(v - 1), tag=self._tag(v, m, 0))
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
                    dy = torch.empty(self.shape)
                    dist.recv(dy, src=self.stage_rank(v + 1), tag=self._tag(v, m, 1))
                    y.backward(dy)
                if v > 0 and x_in is not None:
                    grad = x_in.grad if x_in.grad is not None else torch.zeros(self.shape)
                    pending.append(dist.isend(grad.contiguous(), dst=self.stage_rank(v - 1),
                                              tag=self._tag(v - 1, m, 1)))
        for work in pending:
            work.wait()
        return total

    def _tag(self, v: int, m: int, direction: int) -> int:
        return (v * self.micro + m) * 2 + direction
