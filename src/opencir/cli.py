"""The ``opencir`` command line: one parser assembled from the command registry."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from .commands import COMMANDS
from .retrieval.errors import IndexBusyError


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; ``"a b"`` command names become nested subcommands."""
    from .commands import _import_all  # noqa: F401

    parser = argparse.ArgumentParser(prog="opencir", description="Composed image retrieval toolkit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name in COMMANDS.names():
        command = COMMANDS.get(name)
        head, _, tail = name.partition(" ")
        if tail:
            if head not in groups:
                group = top.add_parser(head, help=f"{head} subcommands")
                groups[head] = group.add_subparsers(dest=f"{head}_command", required=True, metavar="SUBCOMMAND")
            sub = groups[head].add_parser(tail, help=command.help, description=command.help)
        else:
            sub = top.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code. User errors print one clear line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return int(args._run(args) or 0)
    except (UserError, FileNotFoundError, KeyError, ValueError, IndexBusyError) as err:
        if args.verbose:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"opencir: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
