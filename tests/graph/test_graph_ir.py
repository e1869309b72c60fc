"""The IR on hand-built graphs: totals, state bytes, peak activations, JSON round-trip, dump.

Expected numbers are worked out by hand in the comments from the IR contract (docs/ir.md), not
taken from the code's output.
"""

from __future__ import annotations

import dataclasses

import pytest

from dojo.errors import DojoError
from dojo.graph import (
    Block,
    Graph,
    Op,
    TensorInfo,
    dump,
    from_json,
    peak_activation_bytes,
    phase_totals,
    schedule,
    state_bytes,
    to_json,
)


def _t(i: int, shape: tuple[int, ...], role: str, block: str | None = None,
       name: str = "") -> TensorInfo:
    n = 1
    for s in shape:
        n *= s
    return TensorInfo(i, shape, "float32", role, 4 * n, None, name, block)


def _op(i: int, target: str, phase: str, ins: tuple[int, ...], outs: tuple[int, ...],
        flops: int = 0, block: str | None = None) -> Op:
    return Op(i, target, phase, ins, outs, flops, 0, 0, "test", block)


def chain_graph() -> Graph:
    """y = x @ W; z = relu(y); loss = sum(z); backward to dW; one SGD update."""
    tensors = (
        _t(0, (4, 4), "parameter", name="W"), _t(1, (2, 4), "input"),
        _t(2, (2, 4), "activation"), _t(3, (2, 4), "activation"), _t(4, (), "activation"),
        _t(5, (), "activation"), _t(6, (2, 4), "activation"), _t(7, (4, 4), "gradient"),
        _t(8, (4, 4), "parameter", name="W"),
    )
    ops = (
        _op(0, "aten.mm.default", "forward", (1, 0), (2,), 64),
        _op(1, "aten.relu.default", "forward", (2,), (3,), 8),
        _op(2, "aten.sum.default", "forward", (3,), (4,), 8),
        _op(3, "aten.ones_like.default", "backward", (4,), (5,)),
        _op(4, "aten.threshold_backward.default", "backward", (5, 3), (6,), 8),
        _op(5, "aten.mm.default", "backward", (6, 1), (7,), 64),
        _op(6, "aten.add.Tensor", "optimizer", (0, 7), (8,), 16),
    )
    return Graph("chain", tensors, ops)


def test_chain_totals_and_state() -> None:
    g = chain_graph()
    tot = phase_totals(g)
    assert (tot["forward"].ops, tot["forward"].flops) == (3, 80)
    assert (tot["backward"].ops, tot["backward"].flops) == (3, 72)
    assert (tot["optimizer"].ops, tot["optimizer"].flops) == (1, 16)
    st = state_bytes(g)
    # W is 16 floats: 64 B; the updated W (an op output) is not counted a second time
    assert (st.params, st.grads, st.optimizer_state, st.param_count) == (64, 64, 0, 16)


def test_chain_peak_by_hand() -> None:
    # live activation bytes per step: y 32 | y,z 64 | z,loss 36 | z,loss,g 40 | z,g,gy 68 | gy 32
    assert peak_activation_bytes(chain_graph()) == 68


def block_graph(repeat: int) -> Graph:
    """x0 = relu(inp); N x [h = mm(x_in, Wb)]; loss = sum(h_last); backward through the stack."""
    tensors = (
        _t(0, (2, 4), "input"), _t(1, (2, 4), "activation"),
        _t(2, (4, 4), "parameter", "blk", "blk.0.W"), _t(3, (2, 4), "activation", "blk"),
        _t(4, (), "activation"), _t(5, (), "activation"), _t(6, (2, 4), "activation"),
        _t(7, (2, 4), "activation", "blk"),
    )
    ops = (
        _op(0, "aten.relu.default", "forward", (0,), (1,), 8),
        _op(1, "aten.mm.default", "forward", (1, 2), (3,), 64, "blk"),
        _op(2, "aten.sum.default", "forward", (3,), (4,), 8),
        _op(3, "aten.ones_like.default", "backward", (4,), (5,)),
        _op(4, "aten.expand_copy.default", "backward", (5,), (6,)),
        _op(5, "aten.mm.default", "backward", (6, 2, 1), (7,), 64, "blk"),
    )
    blocks = (Block("blk", repeat, ((1, 3), (6, 7)), 64, 16),)
    return Graph("blocks", tensors, ops, blocks)


def test_block_totals_scale_with_repeat() -> None:
    g = block_graph(3)
    tot = phase_totals(g)
    assert (tot["forward"].ops, tot["forward"].flops) == (1 + 3 + 1, 8 + 3 * 64 + 8)
    assert (tot["backward"].ops, tot["backward"].flops) == (2 + 3, 3 * 64)
    assert state_bytes(g).params == 3 * 64 and state_bytes(g).param_count == 48


def test_block_schedule_instances_and_carry() -> None:
    g = block_graph(3)
    mm = [(ins, outs) for op, ins, outs in schedule(g) if op.block == "blk"]
    # forward: instance k reads instance k-1's output (x0 for k = 0)
    assert [m[0][0] for m in mm[:3]] == [(1, None), (3, 0), (3, 1)]
    # backward runs 2, 1, 0; grad-in from the previous execution, saved input of its own instance
    assert [m[1] for m in mm[3:]] == [((7, 2),), ((7, 1),), ((7, 0),)]
    assert [m[0][0] for m in mm[3:]] == [(6, None), (7, 2), (7, 1)]
    assert [m[0][2] for m in mm[3:]] == [(3, 1), (3, 0), (1, None)]


def test_block_peak_by_hand() -> None:
    # steps: x0 | h0 | h1 | h2 | loss | g | gh | gx2 | gx1 | gx0 ; live bytes (32 B each, loss and
    # g 4 B): 32, 64, 96, 128, 132, 100, 132, 160 (x0,h0,h1,gh,gx2), 128, 96
    assert peak_activation_bytes(block_graph(3)) == 160
    # one instance: x0,h0 | +loss | x0,loss,g | x0,g,gh | x0,gh,gx0 -> 96
    assert peak_activation_bytes(block_graph(1)) == 96


@pytest.mark.parametrize("graph", [chain_graph(), block_graph(3)], ids=["chain", "blocks"])
def test_json_round_trip(graph: Graph) -> None:
    text = to_json(graph)
    back = from_json(text)
    assert back == graph
    assert to_json(back) == text


def test_graph_is_immutable() -> None:
    g = chain_graph()
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.ops[0].flops = 1  # type: ignore[misc]


def test_bad_json_is_a_one_line_error() -> None:
    with pytest.raises(DojoError, match=r"not a dojo\.graph/1 graph"):
        from_json('{"format": "other"}', "g.json")
    with pytest.raises(DojoError, match=r"g\.json: not JSON"):
        from_json("{", "g.json")
    with pytest.raises(DojoError, match="malformed"):
        from_json('{"format": "dojo.graph/1", "name": "x"}', "g.json")


def test_dump_lists_every_op_with_phase_and_costs() -> None:
    text = dump(block_graph(3))
    lines = text.splitlines()
    assert "block blk x3" in text
    op_lines = [ln for ln in lines if ln.startswith("#")]
    assert len(op_lines) == 6
    assert "[blk] aten.mm.default(%1:float32[2,4]:activation, %2:float32[4,4]:parameter)" in text
    assert "peak activations 160 B" in text
