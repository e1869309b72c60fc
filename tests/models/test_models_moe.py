"""MoE decoders: parameter counts in closed form against the published totals, the MoE layer
against a dense per-token reference, capacity dropping in token order, routed FLOPs, training."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import dojo
from dojo.errors import ConfigError
from dojo.graph.analysis import root
from dojo.models import build, count_parameters, make_config
from dojo.models.moe import MoE, capacity_of


def _swiglu(h: int, f: int) -> int:
    return 3 * h * f


def _mixtral_counts() -> tuple[int, int]:
    """(total, active per token) of Mixtral 8x7B from its config.json, in closed form."""
    h, layers, heads, kv, f, e, k, vocab = 4096, 32, 32, 8, 14336, 8, 2, 32000
    hd = h // heads
    attn = h * heads * hd + 2 * h * kv * hd + heads * hd * h
    common = attn + 2 * h + h * e                      # attention, two norms, router
    total = layers * (common + e * _swiglu(h, f)) + 2 * vocab * h + h
    active = layers * (common + k * _swiglu(h, f)) + 2 * vocab * h + h
    return total, active


def _deepseek_counts() -> tuple[int, int]:
    """(total, activated per token) of DeepSeek-V3 (no MTP module), closed form."""
    h, layers, dense, heads, vocab = 7168, 61, 3, 128, 129280
    qr, kvr, nope, rope, v = 1536, 512, 128, 64, 128
    attn = (h * qr + qr + qr * heads * (nope + rope) + h * (kvr + rope) + kvr
            + kvr * heads * (nope + v) + heads * v * h)
    router, expert = 256 * h, _swiglu(h, 2048)
    dense_layer = attn + 2 * h + _swiglu(h, 18432)
    moe_total = attn + 2 * h + router + (1 + 256) * expert
    moe_active = attn + 2 * h + router + (1 + 8) * expert
    outer = 2 * vocab * h + h
    return (dense * dense_layer + (layers - dense) * moe_total + outer,
            dense * dense_layer + (layers - dense) * moe_active + outer)


def test_mixtral_count_closed_form_and_published() -> None:
    total, active = _mixtral_counts()
    assert count_parameters(build("mixtral-8x7b", device="meta").model) == total
    assert round(total / 1e8) / 10 == 46.7     # Mistral AI: 46.7B total
    assert round(active / 1e8) / 10 == 12.9    # and 12.9B active per token


def test_deepseek_v3_count_closed_form_and_published() -> None:
    total, active = _deepseek_counts()
    assert count_parameters(build("deepseek-v3", device="meta").model) == total
    assert round(total / 1e9) == 671           # DeepSeek-V3 report: 671B total
    # 37B activated: 37.55B counting both embedding tables as Mistral counts 12.9B; the
    # report's figure is its floor (36.6B without the input table rounds to 37 too).
    assert math.floor(active / 1e9) == 37
    assert round((active - 129280 * 7168) / 1e9) == 37


def _dense_reference(layer: MoE, x: torch.Tensor) -> torch.Tensor:
    """sum_k w_k FFN_{e_k}(x) token by token, every expert computed whole (no capacity)."""
    weights, ids = layer.route(x)
    ex = layer.experts
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for w, e in zip(weights[t], ids[t]):
            h = x[t]
            y = (torch.nn.functional.silu(h @ ex.w1[e]) * (h @ ex.w3[e])) @ ex.w2[e]
            out[t] += w * y
    return out + (layer.shared(x) if layer.shared is not None else 0)


@pytest.mark.parametrize("router", ["softmax", "sigmoid"])
def test_moe_layer_equals_dense_reference_without_drops(router: str) -> None:
    torch.manual_seed(0)
    e, k = 8, 2
    layer = MoE(16, 24, e, k, shared=1 if router == "sigmoid" else 0, capacity=e / k,
                router=router, groups=4 if router == "sigmoid" else 1, group_top_k=2,
                route_scale=2.5 if router == "sigmoid" else 1.0)
    x = torch.randn(20, 16)
    torch.testing.assert_close(layer(x), _dense_reference(layer, x), rtol=1e-5, atol=1e-6)


def test_moe_capacity_drops_later_tokens_first() -> None:
    torch.manual_seed(1)
    e, k, t = 4, 2, 12
    layer = MoE(8, 12, e, k, capacity=0.5)
    x = torch.randn(t, 8)
    c = capacity_of(t, e, k, 0.5)
    assert c == math.ceil(0.5 * t * k / e) == 3
    weights, ids = layer.route(x)
    taken = [0] * e
    keep = torch.zeros(t, k)
    for i in range(t):                    # token order, then each token's choices in order
        for j in range(k):
            e_ij = int(ids[i, j])
            if taken[e_ij] < c:
                keep[i, j] = 1.0
                taken[e_ij] += 1
    ex = layer.experts
    want = torch.zeros_like(x)
    for i in range(t):
        for j in range(k):
            e_ij = ids[i, j]
            h = x[i]
            y = (torch.nn.functional.silu(h @ ex.w1[e_ij]) * (h @ ex.w3[e_ij])) @ ex.w2[e_ij]
            want[i] += keep[i, j] * weights[i, j] * y
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["mixtral-8x7b", "deepseek-v3"])
def test_routed_expert_flops_are_capacity_not_dense(name: str) -> None:
    """The experts' batched matmuls in the captured step: 3 GEMMs of E x C x H x F forward,
    twice that backward, C = ceil(capacity x tokens x top_k / E) -- not every expert on every
    token (that would be E / (capacity top_k) times more)."""
    bundle = build(name, small=True, batch=2)
    cfg = bundle.config
    opt = bundle.make_optimizer(bundle.model.parameters())
    g = dojo.capture(bundle.model, bundle.example_inputs, bundle.loss_fn, opt,
                     targets=bundle.targets).graph
    c = capacity_of(2 * cfg.seq, cfg.experts, cfg.top_k, cfg.capacity)
    gemm = 2 * cfg.experts * c * cfg.hidden * cfg.expert_ffn
    # the experts' own: MLA's unequal head widths run SDPA's math fallback, bmm too; an
    # expert bmm reads an expert weight or makes its gradient (shaped as one)
    experts = {t.shape for t in g.tensors if t.role == "parameter" and ".experts." in t.name}

    def expert(o: Any) -> bool:
        reads = any(g.tensors[root(g, t).id].shape in experts and
                    g.tensors[root(g, t).id].role == "parameter" for t in o.inputs)
        return "bmm" in o.target and o.block == "blocks" and (
            reads or any(g.tensors[t].shape in experts for t in o.outputs))

    fwd = sum(o.flops for o in g.ops if o.phase == "forward" and expert(o))
    bwd = sum(o.flops for o in g.ops if o.phase == "backward" and expert(o))
    assert fwd == 3 * gemm
    assert bwd == 6 * gemm


@pytest.mark.parametrize("name", ["mixtral-8x7b", "deepseek-v3"])
def test_small_preset_loss_falls(name: str) -> None:
    torch.set_num_threads(1)
    bundle = build(name, small=True, batch=4, overrides={"lr": 3e-3})
    opt = bundle.make_optimizer(bundle.model.parameters())
    first = float(bundle.train_step(opt))
    for _ in range(25):
        last = float(bundle.train_step(opt))
    assert last < 0.8 * first


def test_moe_config_errors_show_arithmetic() -> None:
    with pytest.raises(ConfigError, match=r"groups.*a divisor of experts = 8"):
        make_config("deepseek-v3", {"groups": 3}, small=True)
    with pytest.raises(ConfigError, match=r"top_k.*at most experts = 4"):
        make_config("mixtral-8x7b", {"top_k": 5}, small=True)


@pytest.mark.parametrize(("name", "shown"), [
    ("mixtral-8x7b", "46,702,792,704 parameters (46.7B), 12,879,925,248 active per token (12.9B)"),
    ("deepseek-v3", "671,026,404,352 parameters (671.0B), 37,552,282,624 active per token"),
])
def test_inspect_prints_published_counts(name: str, shown: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from dojo.cli.main import main

    assert main(["inspect", name, "--batch", "1", "--seq", "16", "--top", "0"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"model {name}: {shown}" + ("" if "mixtral" in name else " (37.6B)")
    assert (_mixtral_counts() if "mixtral" in name else _deepseek_counts())[0] == int(
        first.split(": ")[1].split(" ")[0].replace(",", ""))
