"""JSON round-trip and a readable text dump of a `Graph`.

JSON layout: {"format": "dojo.graph/1", "name", "meta": {...}, "blocks": [...],
"tensors": [[id, shape, dtype, role, bytes, view_of, name, block], ...],
"ops": [[id, target, phase, inputs, outputs, flops, bytes_read, bytes_written, rule, block,
layer], ...]}. Rows are positional lists to keep a gpt3-175b graph small; field order is the
dataclass field order. `from_json(to_json(g)) == g` holds for every graph.
"""

from __future__ import annotations

import json
from typing import Any

from dojo.errors import DojoError
from dojo.graph.analysis import peak_activation_bytes, phase_totals, state_bytes
from dojo.graph.ir import Block, Graph, Op, TensorInfo

FORMAT = "dojo.graph/1"


def to_dict(graph: Graph) -> dict[str, Any]:
    """A JSON-ready mapping of `graph` (see module docstring)."""
    return {
        "format": FORMAT,
        "name": graph.name,
        "meta": dict(graph.meta),
        "blocks": [
            {"name": b.name, "repeat": b.repeat, "carry": [list(c) for c in b.carry],
             "param_bytes": b.param_bytes, "params": b.params}
            for b in graph.blocks
        ],
        "tensors": [[t.id, list(t.shape), t.dtype, t.role, t.bytes, t.view_of, t.name, t.block]
                    for t in graph.tensors],
        "ops": [[o.id, o.target, o.phase, list(o.inputs), list(o.outputs), o.flops,
                 o.bytes_read, o.bytes_written, o.rule, o.block, o.layer] for o in graph.ops],
    }


def to_json(graph: Graph) -> str:
    """`graph` as a compact JSON string."""
    return json.dumps(to_dict(graph), separators=(",", ":"))


def from_dict(data: dict[str, Any], source: str = "<graph>") -> Graph:
    """Rebuild a graph from `to_dict` output; DojoError if the format is not dojo.graph/1."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DojoError(f"{source}: not a {FORMAT} graph")
    try:
        tensors = tuple(
            TensorInfo(i, tuple(s), d, r, b, v, n, blk)
            for i, s, d, r, b, v, n, blk in data["tensors"]
        )
        ops = tuple(
            Op(i, t, p, tuple(ins), tuple(outs), f, br, bw, rule, blk, layer)
            for i, t, p, ins, outs, f, br, bw, rule, blk, layer in data["ops"]
        )
        blocks = tuple(
            Block(b["name"], b["repeat"], tuple((c[0], c[1]) for c in b["carry"]),
                  b["param_bytes"], b["params"])
            for b in data["blocks"]
        )
        meta = tuple((str(k), str(v)) for k, v in data["meta"].items())
        return Graph(data["name"], tensors, ops, blocks, meta)
    except (KeyError, TypeError, ValueError) as err:
        raise DojoError(f"{source}: malformed {FORMAT} graph ({err})") from None


def from_json(text: str, source: str = "<graph>") -> Graph:
    """Parse `to_json` output back into an equal `Graph`."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DojoError(f"{source}: not JSON ({err.msg} at line {err.lineno})") from None
    return from_dict(data, source)


def _shape(t: TensorInfo) -> str:
    return f"{t.dtype}[{','.join(str(s) for s in t.shape)}]"


def dump(graph: Graph, limit: int | None = None) -> str:
    """A readable listing: header with totals, blocks, then one line per op in eager order.

    Each op line: `#id phase [block] @layer target(inputs) -> (outputs)  FLOP  bytes r/w  rule`,
    tensors shown as `%id:dtype[shape]:role`. `limit` caps the number of op lines.
    """
    st = state_bytes(graph)
    lines = [f"graph {graph.name}: {len(graph.ops)} ops, {len(graph.tensors)} tensors",
             f"  params {st.param_count:,} ({st.params:,} B), grads {st.grads:,} B, "
             f"optimizer state {st.optimizer_state:,} B, "
             f"peak activations {peak_activation_bytes(graph):,} B"]
    for phase, tot in phase_totals(graph).items():
        lines.append(f"  {phase:<9} {tot.ops:>8,} ops {tot.flops:>22,} FLOP "
                     f"{tot.bytes_read:>18,} B read {tot.bytes_written:>18,} B written")
    for b in graph.blocks:
        lines.append(f"  block {b.name} x{b.repeat}: {b.params:,} params/instance, "
                     f"carry {list(b.carry)}")

    def ref(tid: int) -> str:
        t = graph.tensors[tid]
        return f"%{tid}:{_shape(t)}:{t.role}"

    for op in graph.ops[:limit]:
        blk = f" [{op.block}]" if op.block else ""
        blk += f" @{op.layer}" if op.layer else ""
        lines.append(
            f"#{op.id:<5} {op.phase:<9}{blk} {op.target}({', '.join(ref(t) for t in op.inputs)})"
            f" -> ({', '.join(ref(t) for t in op.outputs)})  {op.flops:,} FLOP "
            f"{op.bytes_read:,}/{op.bytes_written:,} B  {op.rule}"
        )
    if limit is not None and len(graph.ops) > limit:
        lines.append(f"... {len(graph.ops) - limit} more ops")
    return "\n".join(lines)
