"""Parameter counts against published totals and closed forms (meta device: no memory)."""

from __future__ import annotations

import pytest
from torch import nn

from dojo.models import build, count_parameters, names

# (model, published parameter count, relative tolerance). Sources: GPT-2 small/medium as counted
# from the released checkpoints (tied embeddings once); torchvision's resnet18/resnet50/vit_b_16
# model cards; Llama 3 model card (8.03B, 70.6B) and Llama 3.1 405B report (405.9B, rounded);
# GPT-3 paper (175B, rounded).
PUBLISHED = [
    ("gpt2-small", 124_439_808, 0.0),
    ("gpt2-medium", 354_823_168, 0.0),
    ("resnet18", 11_689_512, 0.0),
    ("resnet50", 25_557_032, 0.0),
    ("vit-b16", 86_567_656, 0.0),
    ("llama3-8b", 8.03e9, 0.005),
    ("llama3-70b", 70.6e9, 0.005),
    ("llama3-405b", 405.9e9, 0.005),
    ("gpt3-175b", 175e9, 0.01),
]


def _unique_params(model: nn.Module) -> int:
    """Independent count: every parameter name, shared tensors deduplicated by identity."""
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = p.numel()
    return sum(seen.values())


@pytest.mark.parametrize(("name", "published", "rel"), PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_parameter_count_matches_published(name: str, published: float, rel: float) -> None:
    model = build(name, device="meta").model
    count = count_parameters(model)
    assert count == pytest.approx(published, rel=rel, abs=0)
    assert count == _unique_params(model)


@pytest.mark.parametrize("name", names())
def test_count_equals_state_without_buffers(name: str) -> None:
    model = build(name, device="meta", small=True).model
    buffers = {k for k, _ in model.named_buffers()}
    state = {k: v.numel() for k, v in model.state_dict().items() if k not in buffers}
    assert count_parameters(model) == sum(state.values())


def test_gpt2_ties_input_and_output_embedding() -> None:
    # Untied, GPT-2 small would have vocab * hidden more parameters than published.
    model = build("gpt2-small", device="meta").model
    assert count_parameters(model) == 124_439_808
    assert not any(p.shape == (50257, 768) for n, p in model.named_parameters() if "wte" not in n)


@pytest.mark.parametrize(("layers", "hidden", "heads", "ffn", "seq", "vocab"),
                         [(3, 96, 4, 200, 40, 333), (1, 32, 2, 128, 8, 50)])
def test_generic_gpt_closed_form(layers: int, hidden: int, heads: int, ffn: int, seq: int,
                                 vocab: int) -> None:
    over = {"layers": layers, "hidden": hidden, "heads": heads, "ffn": ffn, "seq": seq,
            "vocab": vocab}
    per_layer = (4 * hidden * hidden + 4 * hidden  # qkv + out projection, with biases
                 + 2 * hidden * ffn + ffn + hidden  # MLP with biases
                 + 4 * hidden)  # two LayerNorms
    expected = layers * per_layer + vocab * hidden + seq * hidden + 2 * hidden
    assert count_parameters(build("gpt", device="meta", overrides=over).model) == expected


def test_generic_llama_closed_form() -> None:
    h, heads, kv, ffn, layers, vocab = 128, 8, 2, 300, 3, 1000
    over = {"layers": layers, "hidden": h, "heads": heads, "kv_heads": kv, "ffn": ffn,
            "seq": 32, "vocab": vocab}
    hd = h // heads
    per_layer = 2 * h * h + 2 * h * kv * hd + 3 * h * ffn + 2 * h
    expected = layers * per_layer + 2 * vocab * h + h
    assert count_parameters(build("llama", device="meta", overrides=over).model) == expected
