"""Entry point of the `dojo` command.

Each subcommand lives in `dojo.cli.cmd_<name>` and exposes `add_parser(subparsers)` and
`run(args) -> int`. Command modules import only the standard library at module level; torch,
plotting and video are imported inside `run`, so `dojo --help` stays fast.
User errors (`DojoError`) print one line on stderr and exit with status 2, without a traceback.
Ctrl-C (130) and SIGTERM (143) unwind the same way, so every command removes its temporary files.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

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
    "calibrate",
    "run",
    "train",
    "serve",   # also `dojo admin`
    "client",  # submit, jobs, usage, logs, cancel
    "eval",
)


TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process killed by it


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every `except BaseException` clean-up runs."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises `Terminated` (a KeyboardInterrupt), so a killed command
    removes its temporary files as Ctrl-C does. Later SIGTERMs are ignored, so a second one
    cannot cut the clean-up short. Only the main thread can install handlers; elsewhere
    (a command run from a worker thread) the default stays."""
    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class _StoreOnce(argparse._StoreAction):
    """`--flag VALUE` for a single-valued flag: given twice, it is refused (which value was
    meant?), as a key twice in `--plan` or `--set` is; argparse's own store keeps the last."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        mark = f"_given {self.dest}"  # not an identifier: no command reads it as an option
        if option_string is not None and hasattr(namespace, mark):
            parser.error(f"argument {'/'.join(self.option_strings)}: given twice "
                         f"({getattr(namespace, mark)!r}, then {values!r}): expected it once")
        setattr(namespace, mark, values)
        setattr(namespace, self.dest, values)


class DojoParser(argparse.ArgumentParser):
    """argparse with single-valued flags given once (`_StoreOnce`); subcommands' parsers are
    of this class too (`add_subparsers` makes parsers of its parser's class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)


def build_parser() -> argparse.ArgumentParser:
    parser = DojoParser(
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
    from dojo.errors import DojoError, one_line

    argv = sys.argv[1:] if argv is None else list(argv)
    for i, arg in enumerate(argv, start=1):  # open() and os calls raise ValueError on a NUL
        if "\x00" in arg:
            print(f"dojo: error: argument {i} = {one_line(repr(arg))}: expected no NUL "
                  "character (no path, name or number holds one)", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with sigterm_as_interrupt():
            return int(args.run(args))
    except DojoError as err:
        print(f"dojo: error: {err}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"dojo: {args.command}: terminated (SIGTERM); temporary files removed",
              file=sys.stderr)
        return TERMINATED
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
