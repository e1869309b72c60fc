"""A classification head under tensor parallelism is whole on every rank, as Megatron keeps it
(`compiler.class_head`): only the vocabulary-parallel output layer (gpt's tied head, llama's
untied one over the vocabulary) is split over tp. Reference: the head's GEMMs by hand, 2 m k n
FLOPs each (forward B x H by H x C, backward its input and weight gradients), and Megatron's
ViT and MLP collectives counted by hand (no row statistics of the loss, no f of the head)."""

from __future__ import annotations

import torch
from torch import nn

from dojo.capture import capture
from dojo.compiler.work import ModelWork, model_work
from dojo.models.zoo import MODELS
from dojo.sim.session import captured

B = 2  # micro-batch


def _vit(tp: int) -> tuple[ModelWork, object]:
    graph, cfg = captured("vit-b16", dict(MODELS.get("vit-b16").small), B, None)
    return model_work(graph, tp=tp, scale=1.0), cfg


def _matrix(work: ModelWork, phase: str, field: str) -> float:
    assert work.post is not None
    return sum(getattr(c, field) for c in getattr(work.post, phase) if c.kind == "matrix")


def test_vit_head_flops_bytes_and_weights_are_whole_at_tp2() -> None:
    """ViT's post section (final LayerNorm, class token, head, loss) has the head as its only
    GEMMs: B x H x C forward, twice that backward, not divided by tp; its bytes at tp = 2 are
    tp = 1's; each rank holds the head's H x C + C parameters whole."""
    one, cfg = _vit(1)
    two, _ = _vit(2)
    h, c = cfg.hidden, cfg.classes  # type: ignore[attr-defined]
    assert _matrix(two, "forward", "flops") == 2 * B * h * c
    assert _matrix(two, "backward", "flops") == 2 * 2 * B * h * c
    for phase in ("forward", "backward"):
        assert _matrix(two, phase, "bytes") == _matrix(one, phase, "bytes") > 0
    assert two.post is not None and one.post is not None
    assert two.post.params - one.post.params == (h * c + c) * (2 - 1)


def test_vit_tp2_collectives_are_the_blocks_only() -> None:
    """Megatron's ViT at tp = 2: 2 all-reduces of the (B, S, H) residual stream per block each
    way, FP32; nothing before the blocks (patch embedding whole) or after (whole head)."""
    work, cfg = _vit(2)
    tokens = (cfg.image // cfg.patch) ** 2 + 1  # type: ignore[attr-defined]
    block = (("all_reduce", float(B * tokens * cfg.hidden * 4)),) * 2  # type: ignore[attr-defined]
    assert work.block is not None and work.pre is not None and work.post is not None
    assert (tuple(work.block.tp_forward), tuple(work.block.tp_backward)) == (block, block)
    for sec in (work.pre, work.post):
        assert (tuple(sec.tp_forward), tuple(sec.tp_backward)) == ((), ())


def test_mlp_head_on_a_whole_input_is_whole() -> None:
    """Linear(I, H) column-parallel, Linear(H, H) row-parallel (one all-reduce of its B x H
    output), then the classifier on that whole output: whole, so no loss statistics and no f
    backward (the first linear reads the data, which needs no gradient). FP32."""
    i, h, c = 16, 32, 10
    model = nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                          nn.Linear(h, c)).to("meta")
    x, y = torch.empty(B, i, device="meta"), torch.empty(B, dtype=torch.long, device="meta")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    graph = capture(model, (x,), nn.functional.cross_entropy, opt, targets=(y,), name="mlp",
                    repeat_blocks=False).graph
    work = model_work(graph, tp=2, scale=1.0)
    comms = [(phase, k, n) for sec in (work.pre, work.block, work.post) if sec is not None
             for phase in ("forward", "backward") for k, n in getattr(sec, f"tp_{phase}")]
    assert comms == [("forward", "all_reduce", float(B * h * 4))]
