"""CLI subcommands. Each module registers one ``Command`` in ``COMMANDS`` by name.

A command module defines ``add_arguments(parser)`` and ``run(args) -> int`` and
registers ``Command(help, add_arguments, run, example=...)`` with
``COMMANDS.register("name")``; ``opencir.cli`` builds the argument parser from the
registry, so adding a command never touches the CLI core. Sub-groups (``opencir data
synth``) are registered with a space: ``"data synth"``.

Conventions every command follows (tests/cli checks them for every registered command):
each option has help text (its default is shown by the CLI's formatter), ``example`` is a
command line that works, printed at the end of ``--help``; a command that promises JSON
prints only JSON on stdout (messages go to the ``opencir`` logger, i.e. stderr).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from ..registry import Registry


@dataclass(frozen=True)
class Command:
    """One CLI subcommand: help text, argument declaration and the function that runs it."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    example: str = ""
    """One working command line (or a few, one per line), shown at the end of ``--help``."""


COMMANDS: Registry[Command] = Registry("command")

DEVICE_HELP = "auto (cuda when available, else cpu), cpu, cuda or cuda:N"
"""Help text of every ``--device`` option."""


def positive_int(text: str) -> int:
    """argparse ``type=`` for counts and batch sizes: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
