"""Megatron-Core's per-module recompute (recompute=modules:...) against closed forms.

A Llama block (RMSNorm computed as x * rsqrt(mean(x^2) + eps) * w, SwiGLU w2(silu(w1 x) * w3 x),
fused attention), s b tokens, hidden h, ffn f, a heads, BF16 activations (2 bytes):
- `mlp` drops w1's and w3's outputs and the product (3 s b f elements: 6 s b f bytes; SiLU's
  output is not saved, a fused SwiGLU keeps its inputs, compiler.kernelsave) and reruns the
  three GEMMs (6 s b h f FLOP); under tp=2 with sp it replays the MLP's
  all-gather and reduce-scatter (2 s b h bytes each);
- `layernorm` drops each norm's rsqrt (s b) and output (2 s b h): 4 s b h + 4 s b bytes for
  the block's two norms, and keeps their input (the residual); x * rsqrt is not saved at all,
  a fused RMSNorm rebuilds it from x and rsqrt (apex's FusedRMSNormAffineFunction saves input,
  weight and invvar; compiler.kernelsave);
- `core_attn` drops the attention kernel's FP32 logsumexp (4 a s b bytes) and reruns the
  kernel; its output stays saved: the output projection reads it (the kernel writes it
  token-major, so the (b, s, h) reshape is a view, as in Megatron's (s, b, a, d) layout), and a
  checkpoint keeps an output a matmul outside it reads.
A DeepSeek MoE block (T = s b tokens, E experts of ffn F, top k, capacity rows C = T k / E):
- `moe_act` drops the product (E C F elements; SiLU's output is not saved), reruns no GEMM;
- `moe` drops what the MoE layer saves but its input and reruns its GEMMs: the router
  (2 T h E), the experts (3 x 2 E C h F) and the shared expert (3 x 2 T h F);
- `mla_up_proj` drops at least q and k (2 b nh s (dn + dr) elements), v (b nh s dv) and the
  two norm outputs (s b (rq + rkv)), keeps the down projections' outputs, reruns the two up
  GEMMs.
"""

from __future__ import annotations

import pytest

from dojo.errors import ConfigError
from dojo.hardware.loader import load_system
from dojo.plan.plan import parse_plan
from dojo.sim.session import compile_model

S, B, H, A, F, L = 256, 2, 128, 4, 256, 2
SB, SBH = S * B, S * B * H
LLAMA = {"layers": L, "hidden": H, "heads": A, "kv_heads": A, "ffn": F, "seq": S, "vocab": 512}
DS = {"layers": 3, "hidden": 64, "heads": 4, "kv_heads": 4, "ffn": 128, "expert_ffn": 32,
      "experts": 8, "top_k": 2, "groups": 4, "group_top_k": 2, "q_lora_rank": 32,
      "kv_lora_rank": 16, "qk_nope_dim": 16, "qk_rope_dim": 8, "v_dim": 16, "dense_layers": 1,
      "seq": 40, "vocab": 512}


def _program(model: str, shape: dict, plan: str, devices: int = 1):  # type: ignore[no-untyped-def]
    spec = load_system("h100-cluster", devices=devices)
    return compile_model(model, shape, spec, parse_plan(plan), B)[0]


def _dropped(model: str, shape: dict, plan: str, modules: str, devices: int = 1) -> float:
    """Bytes one repeated block drops under `modules`: on the last of 2 pipeline stages (its
    blocks and the head; the first stage also holds the embedding and any dense layers)."""
    plan = f"{plan},pp=2"
    none = _program(model, shape, plan, 2 * devices).chunks[-1]
    mod = _program(model, shape, f"{plan},recompute=modules:{modules}", 2 * devices).chunks[-1]
    return (none.saved_bytes - mod.saved_bytes) / none.blocks


def _rerun_gemm_flops(model: str, shape: dict, plan: str) -> float:
    """Matrix FLOP one repeated block reruns (last of 2 pipeline stages, as `_dropped`)."""
    chunk = _program(model, shape, f"{plan},pp=2", 2).chunks[-1]
    return sum(o.flops for o in chunk.recompute if o.kind == "matrix") / chunk.blocks


def test_mlp_drops_the_swiglu_intermediates_and_reruns_its_gemms() -> None:
    assert _dropped("llama", LLAMA, f"mb={B}", "mlp") == pytest.approx(6 * SB * F)
    assert _rerun_gemm_flops("llama", LLAMA, f"mb={B},recompute=modules:mlp") == \
        pytest.approx(6 * SBH * F)


def test_layernorm_drops_both_norms_outputs_and_statistics() -> None:
    assert _dropped("llama", LLAMA, f"mb={B}", "layernorm") == pytest.approx(4 * SBH + 4 * SB)
    assert _rerun_gemm_flops("llama", LLAMA, f"mb={B},recompute=modules:layernorm") == 0.0


def test_core_attn_drops_the_kernels_logsumexp_not_its_output() -> None:
    dropped = _dropped("llama", LLAMA, f"mb={B}", "core_attn")
    lse, rng = 4 * A * SB, 2 * 8   # FP32 logsumexp; Philox seed and offset at most
    assert lse <= dropped <= lse + rng
    chunk = _program("llama", LLAMA, f"mb={B},recompute=modules:core_attn").chunks[0]
    assert [o.target for o in chunk.recompute] == \
        [o.target for o in chunk.forward if "attention" in o.target]


def test_modules_add_up_when_disjoint() -> None:
    each = sum(_dropped("llama", LLAMA, f"mb={B}", m) for m in ("mlp", "layernorm", "core_attn"))
    assert _dropped("llama", LLAMA, f"mb={B}", "mlp+layernorm+core_attn") == pytest.approx(each)


def test_mlp_replays_its_tp_collectives_and_core_attn_none() -> None:
    plan = f"tp=2,sp=on,mb={B}"
    mlp = _program("llama", LLAMA, f"{plan},recompute=modules:mlp", 2).chunks[0]
    assert sorted((c.kind, c.nbytes) for c in mlp.tp_recompute) == \
        sorted([("all_gather", 2.0 * SBH), ("reduce_scatter", 2.0 * SBH)] * mlp.blocks)
    attn = _program("llama", LLAMA, f"{plan},recompute=modules:core_attn", 2).chunks[0]
    assert attn.tp_recompute == ()
    # with sp every saved tensor of the MLP splits: half the bytes per device
    assert _dropped("llama", LLAMA, plan, "mlp", 2) == pytest.approx(6 * SB * F / 2)


def _moe_sizes() -> tuple[int, int, int, int, int]:
    t, e, k = B * DS["seq"], DS["experts"], DS["top_k"]
    return t, e, -(-t * k // e), DS["expert_ffn"], DS["hidden"]


def test_moe_act_drops_the_experts_activation_only() -> None:
    _, e, c, f, _ = _moe_sizes()
    assert _dropped("deepseek-v3", DS, f"mb={B}", "moe_act") == pytest.approx(2 * e * c * f)
    assert _rerun_gemm_flops("deepseek-v3", DS, f"mb={B},recompute=modules:moe_act") == 0.0


def test_moe_reruns_router_experts_and_shared_expert() -> None:
    t, e, c, f, h = _moe_sizes()
    gemms = 2 * t * h * e + 6 * e * c * h * f + 6 * t * h * f
    assert _rerun_gemm_flops("deepseek-v3", DS, f"mb={B},recompute=modules:moe") == \
        pytest.approx(gemms)
    # the whole layer's saved tensors include moe_act's and the experts' inputs and outputs
    assert _dropped("deepseek-v3", DS, f"mb={B}", "moe") > \
        _dropped("deepseek-v3", DS, f"mb={B}", "moe_act") + 2 * e * c * f


def test_mlp_applies_to_the_dense_layers_only() -> None:
    """DeepSeek's dense layer rides with the embedding (`pre`): its MLP is recomputed, the MoE
    blocks' is not (Megatron skips an MoE layer)."""
    assert _dropped("deepseek-v3", DS, f"mb={B}", "mlp") == 0.0
    none = _program("deepseek-v3", DS, f"mb={B},pp=2", 2).chunks[0]
    mlp = _program("deepseek-v3", DS, f"mb={B},pp=2,recompute=modules:mlp", 2).chunks[0]
    assert none.saved_bytes - mlp.saved_bytes == pytest.approx(6 * B * DS["seq"] * DS["ffn"])


def test_mla_up_proj_drops_q_k_v_and_the_latent_norms() -> None:
    s, nh, qk = DS["seq"], DS["heads"], DS["qk_nope_dim"] + DS["qk_rope_dim"]
    latent = s * B * (DS["q_lora_rank"] + DS["kv_lora_rank"])
    floor = 2 * (2 * B * nh * s * qk + B * nh * s * DS["v_dim"] + latent)
    dropped = _dropped("deepseek-v3", DS, f"mb={B}", "mla_up_proj")
    assert floor <= dropped
    # at most also the up GEMMs' outputs, the norms' statistics, rope's halves (and s b (rq + rkv))
    assert dropped <= floor + 2 * (B * s * nh * (qk + DS["qk_nope_dim"] + DS["v_dim"]) + latent
                                   + 2 * s * B + 2 * B * nh * s * DS["qk_rope_dim"])
    rq, rkv = DS["q_lora_rank"], DS["kv_lora_rank"]
    up = 2 * s * B * (rq * nh * qk + rkv * nh * (DS["qk_nope_dim"] + DS["v_dim"]))
    assert _rerun_gemm_flops("deepseek-v3", DS, f"mb={B},recompute=modules:mla_up_proj") == \
        pytest.approx(up)


@pytest.mark.parametrize("value", ["modules:attn", "modules:mlp+mlp", "modules:"])
def test_unknown_module_is_refused_naming_the_valid_ones(value: str) -> None:
    with pytest.raises(ConfigError, match=r"recompute.*core_attn, mla_up_proj, layernorm, mlp"):
        parse_plan(f"recompute={value}")


def test_simulate_refuses_an_unknown_module_in_one_line(capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    from dojo.cli.main import main

    status = main(["simulate", "mlp", "--system", "h100-cluster:1", "--plan",
                   "dp=1,recompute=modules:mlp+attn"])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1
    assert "'recompute'" in err and "core_attn, mla_up_proj, layernorm, mlp, moe_act, moe" in err


@pytest.mark.parametrize("recompute", ["modules:mla_up_proj+mlp", "ops:mm"])
def test_stage_bound_matches_the_memory_walk(recompute: str) -> None:
    """The plan search's per-stage activations (`stagemem`) count a policy's drops, the dense
    layers' included, as the memory walk does."""
    from dojo.sim.memory import in_flight_bytes
    from dojo.sim.stagemem import stage_activations

    program = _program("deepseek-v3", DS, f"pp=2,mb={B},recompute={recompute}", 2)
    walk = [in_flight_bytes(program, s) for s in range(2)]
    assert stage_activations(program.work, program.plan, B) == pytest.approx(walk)
