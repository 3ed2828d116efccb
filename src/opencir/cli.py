"""The ``opencir`` command line: one parser assembled from the command registry.

Behaves like the tools people know: ``--version``, ``-q/--quiet`` and ``-v/--verbose``;
only the ``opencir`` logger is configured (third-party INFO lines stay quiet); every
option's help shows its default; each command's ``--help`` ends with an example; errors a
user can fix are one line on stderr (``opencir: error: ...``, exit code 2), not a traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from . import __version__
from .commands import COMMANDS, Command
from .retrieval.errors import IndexBusyError

LOGGER = "opencir"


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (when it has one) and keeps the example epilog's lines."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, [], False) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action) or ""


def _epilog(command: Command) -> str | None:
    lines = [line.strip() for line in command.example.strip().splitlines() if line.strip()]
    if not lines:
        return None
    return ("examples:" if len(lines) > 1 else "example:") + "".join(f"\n  {line}" for line in lines)


def _add_loudness(parser: argparse.ArgumentParser, default: object) -> None:
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true", default=default,
                          help="debug messages, and a full traceback on errors")
    loudness.add_argument("-q", "--quiet", action="store_true", default=default,
                          help="only warnings and errors (progress bars show on a terminal only)")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; ``"a b"`` command names become nested subcommands."""
    from .commands import _import_all  # noqa: F401

    parser = argparse.ArgumentParser(prog="opencir", description="Composed image retrieval toolkit",
                                     formatter_class=HelpFormatter,
                                     epilog="example:\n  opencir demo    # the offline end-to-end demo\n"
                                            "  opencir COMMAND --help")
    parser.add_argument("--version", action="version", version=f"opencir {__version__}")
    _add_loudness(parser, default=False)
    common = argparse.ArgumentParser(add_help=False)  # -v/-q also after the command name
    _add_loudness(common, default=argparse.SUPPRESS)
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name in COMMANDS.names():
        command = COMMANDS.get(name)
        head, _, tail = name.partition(" ")
        options = dict(help=command.help, description=command.help, epilog=_epilog(command),
                       formatter_class=HelpFormatter, parents=[common])
        if tail:
            if head not in groups:
                group = top.add_parser(head, help=f"{head} subcommands", description=f"{head} subcommands",
                                       formatter_class=HelpFormatter)
                groups[head] = group.add_subparsers(dest=f"{head}_command", required=True, metavar="SUBCOMMAND")
            sub = groups[head].add_parser(tail, **options)
        else:
            sub = top.add_parser(name, **options)
        command.add_arguments(sub)
        sub.set_defaults(_run=command.run)
    return parser


class _LevelFormatter(logging.Formatter):
    """INFO lines as plain messages; other levels prefixed with the level name."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno == logging.INFO else f"{record.levelname.lower()}: {message}"


class _ThirdPartyWarnings(logging.Filter):
    """Root-handler filter: other libraries' warnings and errors only. Drops opencir's
    records (its own handler prints them) and records logged on the root logger itself
    (some libraries log an exception there just before raising it; opencir reports that
    error in its own one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "root" and record.name != LOGGER and not record.name.startswith(f"{LOGGER}.")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (pytest's capture swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(verbose: bool = False, quiet: bool = False) -> Callable[[], None]:
    """Configure the ``opencir`` logger (stderr; DEBUG with -v, WARNING with -q) and return
    a function that undoes it.

    Third-party loggers keep the root logger's WARNING level, so their INFO lines (FAISS's
    loader, httpx, ...) never show; their warnings and errors still do, one line each.
    """
    opencir_logger, root = logging.getLogger(LOGGER), logging.getLogger()
    own = _StderrHandler()
    own.setFormatter(_LevelFormatter("%(message)s"))
    others = _StderrHandler()
    others.setLevel(logging.WARNING)
    others.addFilter(_ThirdPartyWarnings())
    others.setFormatter(_LevelFormatter("%(name)s: %(message)s"))
    previous_level = opencir_logger.level
    opencir_logger.addHandler(own)
    opencir_logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    root.addHandler(others)

    def restore() -> None:
        opencir_logger.removeHandler(own)
        opencir_logger.setLevel(previous_level)
        root.removeHandler(others)

    return restore


def missing_extra_message(err: ModuleNotFoundError) -> str:
    """``No module named 'fastapi'`` -> which ``opencir[extra]`` to install, read from the
    package's own metadata (so every extra declared in pyproject.toml is covered)."""
    import re
    from importlib import metadata

    module = (err.name or "").split(".")[0]
    wanted = module.lower().replace("_", "-")
    extras: list[str] = []
    try:
        requirements = metadata.requires("opencir") or []
    except metadata.PackageNotFoundError:
        requirements = []
    for requirement in requirements:
        name = re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", requirement)
        if extra and extra.group(1) != "all" and (name == wanted or name.startswith(f"{wanted}-")
                                                   or name.endswith(f"-{wanted}")):
            extras.append(extra.group(1))
    if extras:
        choice = sorted(set(extras), key=lambda e: (len(e), e))[0]
        return f"this needs the optional package {module!r}: pip install 'opencir[{choice}]'"
    return f"this needs the Python package {module!r}, which is not installed: pip install {module}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code. User errors print one clear line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    restore_logging = configure_logging(args.verbose, args.quiet)
    try:
        return int(args._run(args) or 0)
    except (UserError, FileNotFoundError, KeyError, ValueError, IndexBusyError, ModuleNotFoundError) as err:
        if args.verbose:
            raise
        if isinstance(err, ModuleNotFoundError):
            message = missing_extra_message(err)
        else:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"opencir: error: {message}", file=sys.stderr)
        return 2
    finally:
        restore_logging()


if __name__ == "__main__":
    sys.exit(main())
