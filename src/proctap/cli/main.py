"""The command line: ``proctap watch``, ``proctap run``, ``proctap backends``, ``proctap --version``.

Adding a subcommand: write ``cli/NAME.py`` defining ``SUBCOMMAND = Subcommand(name, help, add_arguments, run)``
(``add_arguments(parser)`` declares its options, ``run(args) -> int`` does the work and returns the exit status),
taking shared options and validators from :mod:`.common`, then list it in :data:`SUBCOMMAND_MODULES` below.
:func:`main` turns ProctapError, OSError, Ctrl-C, SIGTERM and a closed output pipe into one-line messages and exit
statuses; a subcommand just raises.

Exit statuses: 0 success; 2 error ("proctap: error: ..." on stderr, bad flags included); 1 internal error (a bug:
one line too, PROCTAP_DEBUG=1 shows the traceback); 128+N when ended by signal N
(130 Ctrl-C, 143 SIGTERM, 129 SIGHUP) after printing the summary; 141 when the reader of stdout went away (as if
killed by SIGPIPE, quietly).
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from typing import TextIO

from .. import __version__
from ..errors import BackendUnavailable, ProctapError
from .common import (
    EXIT_BROKEN_PIPE,
    EXIT_ERROR,
    EXIT_INTERNAL,
    PROG,
    OutputClosed,
    Parser,
    Subcommand,
    error,
    os_error_message,
    silence_stdout,
    stderr,
)

__all__ = ["SUBCOMMAND_MODULES", "build_parser", "main", "subcommands"]

# The subcommands in --help order: the module of each, imported when needed (``proctap run`` need not import
# top's curses screen and aggregator: 15 ms of its start-up).
SUBCOMMAND_MODULES = {"watch": "watch", "top": "top", "run": "run", "ps": "ps", "backends": "backends"}


def _subcommand(name: str) -> Subcommand:
    module = importlib.import_module(f"{__package__}.{SUBCOMMAND_MODULES[name]}")
    command: Subcommand = module.SUBCOMMAND
    return command


def subcommands() -> tuple[Subcommand, ...]:
    """Every subcommand, in --help order (imports them all)."""
    return tuple(_subcommand(name) for name in SUBCOMMAND_MODULES)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with ``only`` (a subcommand's name), with that subcommand alone (what running it
    needs; the others' modules are not imported)."""
    parser = Parser(prog=PROG, description="Know the moment a Linux task is created, exec'd or destroyed.")
    parser.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in SUBCOMMAND_MODULES if only is None else (only,):
        command = _subcommand(name)
        child = sub.add_parser(command.name, help=command.help, description=command.description or command.help)
        command.add_arguments(child)
        child.set_defaults(_run=command.run, _parser=child)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``proctap`` console script; returns the exit status."""
    warnings.showwarning = _show_warning
    _buffered_stdout()
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(words[0] if words and words[0] in SUBCOMMAND_MODULES else None)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the subcommand's parser, so the hint is 'proctap watch --help'
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if getattr(args, "_run", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        status: int = args._run(args)
        sys.stdout.flush()
        return status
    except (BrokenPipeError, OutputClosed):
        silence_stdout()
        return EXIT_BROKEN_PIPE
    except BackendUnavailable as exc:
        error(f"{exc}; see 'proctap backends'" if "proctap backends" not in str(exc) else str(exc))
    except ProctapError as exc:
        error(str(exc))
    except OSError as exc:
        error(os_error_message(getattr(args, "backend", "auto"), exc))
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Exception as exc:  # a bug: still one line, unless asked for the traceback
        if os.environ.get("PROCTAP_DEBUG"):
            raise
        error(f"internal error: {type(exc).__name__}: {exc}; please report it (PROCTAP_DEBUG=1 shows the traceback)")
        return EXIT_INTERNAL
    return EXIT_ERROR


def _buffered_stdout() -> None:
    """Under ``python -u`` or PYTHONUNBUFFERED, sys.stdout writes straight to an unbuffered FileIO, and a write that
    a signal cuts short (a full pipe, then Ctrl-C) is silently truncated: the text layer ignores the count a raw
    write returns.  A BufferedWriter finishes partial writes; the renderers flush after every batch anyway."""
    stream = sys.stdout
    raw = getattr(stream, "buffer", None)
    if isinstance(stream, io.TextIOWrapper) and isinstance(raw, io.FileIO):
        sys.stdout = io.TextIOWrapper(
            io.BufferedWriter(io.FileIO(raw.fileno(), "w", closefd=False)),
            encoding=stream.encoding,
            errors=stream.errors,
            line_buffering=True,
        )


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Library warnings (e.g. a capped kernel buffer) as one line, without the source location."""
    stderr(f"{PROG}: warning: {message}")


