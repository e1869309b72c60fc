"""RMSNorm, rotary embeddings, grouped-query and causal attention against references written
here from the papers' definitions (loops and explicit softmax, no shared code)."""

from __future__ import annotations

import math

import torch

from dojo.models.gpt import CausalSelfAttention
from dojo.models.llama import Attention, RMSNorm, apply_rotary, rotary_angles


def test_rmsnorm_matches_definition() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16)
    norm = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16))
    expected = torch.empty_like(x)
    for idx in range(15):
        row = x.view(15, 16)[idx]
        rms = math.sqrt(sum(float(v) ** 2 for v in row) / 16 + 1e-5)
        expected.view(15, 16)[idx] = row / rms * norm.weight.detach()
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-6)


def _rotary_reference(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Su et al. 2021 / Meta's llama: pair (2i, 2i+1) at position m rotated by m * theta^(-2i/d)."""
    s, d = x.shape[-2:]
    out = torch.empty_like(x)
    for m in range(s):
        for i in range(d // 2):
            angle = m * theta ** (-2 * i / d)
            c, sn = math.cos(angle), math.sin(angle)
            a, bb = x[..., m, 2 * i], x[..., m, 2 * i + 1]
            out[..., m, 2 * i] = a * c - bb * sn
            out[..., m, 2 * i + 1] = a * sn + bb * c
    return out


def test_rotary_matches_pairwise_rotation() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    got = apply_rotary(x, rotary_angles(7, 8, 10000.0, x.device).double())
    torch.testing.assert_close(got, _rotary_reference(x, 10000.0))


def test_rotary_preserves_relative_position_dot_products() -> None:
    # The property that defines RoPE: <R_m q, R_n k> depends on m - n only.
    torch.manual_seed(2)
    q, k = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    seq = torch.stack([q] * 10)[None, None]  # (1, 1, 10, 16)
    keys = torch.stack([k] * 10)[None, None]
    angles = rotary_angles(10, 16, 500000.0, q.device).double()
    rq, rk = apply_rotary(seq, angles)[0, 0], apply_rotary(keys, angles)[0, 0]
    torch.testing.assert_close(rq[5] @ rk[2], rq[7] @ rk[4])
    torch.testing.assert_close(rq[3] @ rk[3], q @ k)


def _causal_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    s = q.shape[-2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    mask = torch.ones(s, s, dtype=torch.bool).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def test_gqa_attention_matches_reference() -> None:
    torch.manual_seed(3)
    hidden, heads, kv, s = 32, 8, 2, 6
    attn = Attention(hidden, heads, kv, theta=10000.0).double()
    x = torch.randn(2, s, hidden, dtype=torch.float64)
    hd = hidden // heads
    q = (x @ attn.wq.weight.T).view(2, s, heads, hd).transpose(1, 2)
    k = (x @ attn.wk.weight.T).view(2, s, kv, hd).transpose(1, 2)
    v = (x @ attn.wv.weight.T).view(2, s, kv, hd).transpose(1, 2)
    q, k = _rotary_reference(q, 10000.0), _rotary_reference(k, 10000.0)
    heads_out = []
    for head in range(heads):
        group = head // (heads // kv)  # query heads 0..3 share kv head 0, 4..7 kv head 1
        heads_out.append(_causal_softmax_attention(q[:, head], k[:, group], v[:, group]))
    y = torch.stack(heads_out, dim=1).transpose(1, 2).reshape(2, s, hidden)
    torch.testing.assert_close(attn(x), y @ attn.wo.weight.T)


def test_gpt_attention_is_causal_and_matches_reference() -> None:
    torch.manual_seed(4)
    attn = CausalSelfAttention(24, 3).double()
    x = torch.randn(2, 5, 24, dtype=torch.float64)
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(24, dim=2)
    q, k, v = (t.view(2, 5, 3, 8).transpose(1, 2) for t in (q, k, v))
    y = _causal_softmax_attention(q, k, v).transpose(1, 2).reshape(2, 5, 24)
    torch.testing.assert_close(attn(x), y @ attn.proj.weight.T + attn.proj.bias)
    # Changing the last token leaves earlier outputs alone.
    x2 = x.clone()
    x2[:, -1] += 1.0
    torch.testing.assert_close(attn(x2)[:, :-1], attn(x)[:, :-1])
