"""CLI subcommands. Each module registers one ``Command`` in ``COMMANDS`` by name.

A command module defines ``add_arguments(parser)`` and ``run(args) -> int`` and
decorates a ``Command`` with ``@COMMANDS.register("name")``; ``opencir.cli`` builds the
argument parser from the registry, so adding a command never touches the CLI core.
Sub-groups (``opencir data synth``) are registered with a space: ``"data synth"``.
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


COMMANDS: Registry[Command] = Registry("command")
