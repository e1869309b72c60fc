"""The flex token dispatcher (`dispatcher=flex`: Megatron-Core's DeepEP / HybridEP backends)
against closed forms and brute force: a token crosses the ep group's outermost level once per
other unit holding one of its experts (expected over uniform routing, with DeepSeek-V3's
group-limited routing), then fans out over the levels inside."""

from __future__ import annotations

import itertools
import math

import pytest

from dojo.compiler.experts import MoeLayout, dispatch_comms, remote_units
from dojo.compiler.mapping import GroupLevel
from dojo.plan.plan import parse_plan

INNER = GroupLevel("server", "nvlink", 8, 450e9, 0.0, "switch")
OUTER = GroupLevel("cluster", "ib", 8, 50e9, 0.0, "fat_tree")


def _layout(experts: int, top_k: int, groups: int = 1, group_top_k: int = 1) -> MoeLayout:
    return MoeLayout(experts=experts, top_k=top_k, hidden=7168, tokens=4096, block_layers=1,
                     outer_layers=0, block_params=0, outer_params=0, width=2048, rows=128,
                     groups=groups, group_top_k=group_top_k)


def _brute(experts: int, top_k: int, units: int) -> float:
    """Mean over every top_k set and every source unit of the other units hit."""
    per = experts // units
    total = count = 0
    for chosen in itertools.combinations(range(experts), top_k):
        hit = {e // per for e in chosen}
        for own in range(units):
            total += len(hit - {own})
            count += 1
    return total / count


@pytest.mark.parametrize(("experts", "top_k", "units"), [(8, 2, 2), (8, 2, 4), (16, 4, 4)])
def test_remote_units_match_brute_force(experts: int, top_k: int, units: int) -> None:
    assert remote_units(_layout(experts, top_k), units) == pytest.approx(
        _brute(experts, top_k, units))


def test_group_limited_routing_deepseek_v3() -> None:
    # 256 experts, top-8 in 4 of 8 groups; ep 64 over 8 nodes: one group per node
    ds = _layout(256, 8, groups=8, group_top_k=4)
    missed = math.comb(96, 8) / math.comb(128, 8)
    assert remote_units(ds, 8) == pytest.approx(4 * (1 - missed) * 7 / 8)   # 3.18
    # over 16 nodes (two per group): 8 nodes of 16 experts to choose from
    missed16 = math.comb(112, 8) / math.comb(128, 8)
    assert remote_units(ds, 16) == pytest.approx(8 * (1 - missed16) * 15 / 16)


def test_flex_sends_one_copy_per_other_node_and_fans_out_at_once() -> None:
    """flex over 8 servers of 8 GPUs: InfiniBand carries one copy per other server a token goes
    to, NVLink fans all copies out inside the server (7/8 of them leave their GPU), the two
    pipelined: the dispatch takes the longer of the two."""
    from dojo.sim.collectives import collective_time

    ds = _layout(256, 8, groups=8, group_top_k=4)
    nbytes = 2048 * 8 * 7168 * 2.0                        # all 8 copies of 2,048 tokens, BF16
    (one,) = dispatch_comms((INNER, OUTER), ds, parse_plan("dp=64,ep=64"), nbytes)
    assert (one.nbytes, one.levels) == (nbytes, (INNER, OUTER))
    (flex,) = dispatch_comms((INNER, OUTER), ds, parse_plan("dp=64,ep=64,dispatcher=flex"),
                             nbytes)
    ib = nbytes / 8 * remote_units(ds, 8)                 # bytes a GPU sends over InfiniBand
    fan = nbytes * 7 / 8                                  # copies it spreads over NVLink
    t, algo = collective_time(flex.kind, flex.nbytes, flex.levels, 1.0, 0.0)
    assert algo == "pairwise"
    assert t == pytest.approx(max(ib / OUTER.bytes_per_s, fan / INNER.bytes_per_s))
    assert t < collective_time(one.kind, one.nbytes, one.levels, 1.0, 0.0)[0]
    # a group inside one level has nothing to deduplicate
    (inside,) = dispatch_comms((INNER,), ds, parse_plan("dp=64,ep=8,dispatcher=flex"), nbytes)
    assert inside.levels == (INNER,)


def test_dispatcher_in_plan_text() -> None:
    assert "dispatcher=flex" in parse_plan("dp=8,ep=8,dispatcher=flex").text()
    assert "dispatcher" not in parse_plan("dp=8").text()



MOE = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "ffn": 128, "expert_ffn": 96,
       "experts": 8, "top_k": 2, "seq": 32, "vocab": 256}
EXPERT_PARAMS = 2 * 3 * 8 * 64 * 96        # routed experts, whole model


def test_etp1_folds_tp_into_the_expert_ranks() -> None:
    """etp=1 (Megatron-Core's expert_tensor_parallel_size=1): an ep group is ep consecutive
    GPUs, each holds whole experts (experts / ep of them), and their gradients reduce over the
    tp x dp / ep ranks holding the same ones; etp = tp keeps the stride-tp group and the split."""
    from dojo.compiler.experts import param_groups
    from dojo.hardware import load_system
    from dojo.sim.session import compile_model

    spec = load_system("h100-cluster:16")

    def program(plan: str):  # type: ignore[no-untyped-def]
        return compile_model("moe", MOE, spec, parse_plan(plan), 32)[0]

    folded, split = program("dp=8,tp=2,ep=8,etp=1"), program("dp=8,tp=2,ep=8")
    assert [(lv.level, lv.members) for lv in folded.experts.a2a_levels] == [("server", 8)]
    assert [(lv.level, lv.members) for lv in split.experts.a2a_levels] == \
        [("server", 4), ("cluster", 2)]
    (_, (held1, _, size1)), (_, (held2, _, size2)) = (param_groups(folded, 0),
                                                      param_groups(split, 0))
    assert (held1, size1) == (pytest.approx(EXPERT_PARAMS / 8), 2)      # whole, tp x dp / ep
    assert (held2, size2) == (pytest.approx(EXPERT_PARAMS / 8 / 2), 1)  # tp split, dp / ep
    assert "etp=1" in folded.plan.text()


def test_etp_errors_show_the_arithmetic() -> None:
    from dojo.errors import ConfigError
    from dojo.hardware import load_system
    from dojo.sim.session import simulate_model

    spec = load_system("h100-cluster:16")
    for text, shown in (("dp=4,tp=2,ep=4,etp=3", "etp"),
                        ("dp=3,tp=2,ep=4,etp=1", "tp x dp x cp .* 6 / ep 4 = 1.5")):
        with pytest.raises(ConfigError, match=shown):
            simulate_model("moe", MOE, spec, parse_plan(text), 24)


def test_selective_recompute_leaves_the_expert_gemms() -> None:
    """recompute=selective replays the attention core (Korthikanti et al.), not the routed
    experts' batched matmuls: the block's selective ops hold no GEMM with the experts' batch."""
    from dojo.hardware import load_system
    from dojo.sim.session import compile_model

    spec = load_system("h100-cluster:16")
    program = compile_model("moe", MOE, spec, parse_plan("dp=8,ep=8,recompute=selective"), 32)[0]
    block = program.work.block
    assert block is not None
    experts = [o for o in block.forward if "bmm" in o.target and o.shape[0] == 1]  # 8 / ep 8
    assert experts, "the expert GEMMs are in the block"
    assert not any("bmm" in o.target for o in block.recompute_selective)
    assert not any(c.kind == "all_to_all" for c in program.chunks[0].tp_recompute)
