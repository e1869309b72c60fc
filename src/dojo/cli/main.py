"""Entry point of the `dojo` command.

Each subcommand lives in `dojo.cli.cmd_<name>` and exposes `add_parser(subparsers)` and
`run(args) -> int`. Command modules import only the standard library at module level; torch,
plotting and video are imported inside `run`, so `dojo --help` stays fast.
User errors (`DojoError`) print one line on stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Order is the order shown in `dojo --help`.
COMMANDS: tuple[str, ...] = (
    "info",
    "data",
    "inspect",
    "simulate",
    "plan",
    "compare",
    "sweep",
    "validate",
    "run",
    "train",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dojo",
        description="Tesla's Dojo training supercomputer in software.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"dojo.cli.cmd_{name}")
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `dojo` command line; returns the process exit status."""
    from dojo.errors import DojoError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except DojoError as err:
        print(f"dojo: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dojo: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `dojo info v1 --json | head`: the reader left, not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 0
    sys.exit(status)


if __name__ == "__main__":
    entry()
