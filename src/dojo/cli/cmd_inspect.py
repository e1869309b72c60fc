"""`dojo inspect`: capture a model's training step and summarise its graph.

    dojo inspect MODEL [--batch N] [--seq S] [--set key=value ...] [--top K] [--json]

MODEL is a zoo name (`dojo inspect nope` lists them) or `path/to/file.py:factory`. The model is
built on the "meta" device and captured with fake tensors, so even gpt3-175b needs no memory.
`--json` prints exactly: params, flops{forward,backward,optimizer,total},
ops{forward,backward,optimizer}, bytes{params,grads,optimizer_state,peak_activations}.
"""

from __future__ import annotations

import argparse
from typing import Any

from dojo.cli.common import MAX_TOP, int_flag, parse_sets, print_json, top_flag
from dojo.errors import ConfigError

PHASES = ("forward", "backward", "optimizer")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "inspect", help="capture a model's training step: FLOPs, ops, memory per phase")
    parser.add_argument("model", help="zoo model name or path/to/file.py:factory")
    parser.add_argument("--batch", default=None, help="batch size (default 2)")
    parser.add_argument("--seq", default=None, help="tokens per sample (sequence models)")
    parser.add_argument("--set", action="append", dest="sets", metavar="KEY=VALUE",
                        help="override a model config field (repeatable)")
    parser.add_argument("--top", default="10", help=f"how many top ops by FLOPs to list (0 to "
                        f"{MAX_TOP}, default 10; 0 and --json list none)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(run=run)


def _int(text: str | None, flag: str) -> int | None:
    if text is None:
        return None
    return int_flag(text, flag)


def _refuse_factory_flags(model: str, batch: int | None, seq: int | None,
                          sets: list[str] | None) -> None:
    """A user factory fixes its own inputs and config: say so instead of ignoring the flags."""
    path, sep, attr = model.rpartition(":")
    if not (sep and path.endswith(".py") and attr):
        return
    given = [flag for flag, value in (("--batch", batch), ("--seq", seq), ("--set", sets))
             if value is not None]
    if given:
        raise ConfigError(given[0], given[0].lstrip("-"), {"--batch": batch, "--seq": seq,
                          "--set": sets}[given[0]], f"no value: model '{model}' is a user "
                          "factory, whose example inputs and settings come from the factory")


def summary(graph: Any) -> dict[str, Any]:
    """The --json mapping of a captured graph (see module docstring); FLOP and bytes."""
    from dojo.graph import peak_activation_bytes, phase_totals, state_bytes

    totals = phase_totals(graph)
    st = state_bytes(graph)
    flops = {p: totals[p].flops for p in PHASES}
    flops["total"] = sum(flops.values())
    return {
        "params": st.param_count,
        "flops": flops,
        "ops": {p: totals[p].ops for p in PHASES},
        "bytes": {"params": st.params, "grads": st.grads, "optimizer_state": st.optimizer_state,
                  "peak_activations": peak_activation_bytes(graph)},
    }


def run(args: argparse.Namespace) -> int:
    top = top_flag(_int(args.top, "--top"), "rows of the top-ops table, 0 for none; --json "
                   "prints none", least=0)
    batch, seq = _int(args.batch, "--batch"), _int(args.seq, "--seq")
    _refuse_factory_flags(args.model, batch, seq, args.sets)
    import torch

    from dojo.capture import capture
    from dojo.graph import top_ops
    from dojo.models import build

    torch.set_num_threads(1)
    bundle = build(args.model, batch=batch, seq=seq, device="meta",
                   overrides=parse_sets(args.sets))
    optimizer = bundle.make_optimizer(bundle.model.parameters())
    captured = capture(bundle.model, bundle.example_inputs, bundle.loss_fn, optimizer,
                       targets=bundle.targets, name=args.model)
    info = summary(captured.graph)
    if args.json:
        print_json(info)
        return 0
    from dojo.models.moe import active_parameters

    print(_table(args.model, captured.graph, info, top_ops(captured.graph, top),
                 active_parameters(bundle.model)))
    return 0


def _gib(n: int) -> str:
    return f"{n:,} B ({n / 2**30:.3f} GiB)"


def _table(name: str, graph: Any, info: dict[str, Any], top: list[Any],
           active: int | None = None) -> str:
    lines = [f"model {name}: {info['params']:,} parameters ({info['params'] / 1e9:.1f}B)"]
    if active is not None:   # mixture of experts: what one token passes through
        lines[0] += f", {active:,} active per token ({active / 1e9:.1f}B)"
    blocks = ", ".join(f"{b.name} x{b.repeat}" for b in graph.blocks)
    if blocks:
        lines.append(f"repeated blocks (captured once): {blocks}")
    lines.append(f"{'phase':<10} {'ops':>10} {'FLOP':>26}")
    for p in PHASES:
        lines.append(f"{p:<10} {info['ops'][p]:>10,} {info['flops'][p]:>26,}")
    lines.append(f"{'total':<10} {sum(info['ops'].values()):>10,} {info['flops']['total']:>26,}")
    b = info["bytes"]
    lines += ["", f"parameters        {_gib(b['params'])}", f"gradients         {_gib(b['grads'])}",
              f"optimizer state   {_gib(b['optimizer_state'])}",
              f"peak activations  {_gib(b['peak_activations'])}  (eager schedule)"]
    if top:
        lines += ["", f"top {len(top)} ops by FLOP:", f"{'op':<58} {'phase':<10} {'count':>7} "
                  f"{'FLOP':>24} {'share':>7}"]
        total = max(info["flops"]["total"], 1)
        for target, phase, count, flops in top:
            lines.append(f"{target:<58} {phase:<10} {count:>7,} {flops:>24,} "
                         f"{100 * flops / total:>6.1f}%")
    return "\n".join(lines)
