"""What the subcommands share: option types and validators, the backend options, stop signals, one-line messages.

Option types raise ``argparse.ArgumentTypeError`` with a message that says what to give instead; every subcommand
takes its backend options from :func:`add_backend_arguments`, so they validate alike.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn

from ..backends import BACKENDS, DEFAULT_ARGV_LIMIT, MAX_ARGV_LIMIT
from ..errors import ProctapError
from ..events import EventKind
from ..watcher import parse_kinds

PROG = "proctap"
DEFAULT_EVENTS = "fork,exec,exit,fork_failed"  # Lost is always added
EXIT_ERROR = 2
EXIT_INTERNAL = 1
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
MAX_DURATION = 1e7  # seconds (115 days): keeps every deadline representable
MAX_LATENCY = 10.0  # seconds: more would hold events back for longer than anyone watching wants
MAX_BUFFER = (1 << 31) - 1  # socket buffer sizes are C ints
_PRIVILEGES = {
    "bpf": "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)",
    "netlink": "CAP_NET_ADMIN",
    "tracefs": "root (CAP_SYS_ADMIN) and a mounted tracefs",
    "kprobe": "root (CAP_SYS_ADMIN) and a mounted tracefs",
    "proc": "read access to /proc",
}


class StopSignals:
    """While active, SIGINT, SIGTERM and SIGHUP only record that we should stop (``signum``) and wake the drain loop
    through a wakeup pipe: the loop then ends between two batches, never in the middle of a backend read or a write,
    so the watcher closes cleanly (removing its kernel objects) and the summary counts exactly what was printed."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.fd = -1
        self._write_fd = -1
        self._previous: dict[int, object] = {}
        self._previous_wakeup = -1

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> StopSignals:
        self.fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous_wakeup = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._previous = {sig: signal.signal(sig, self._handler) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        signal.set_wakeup_fd(self._previous_wakeup)
        os.close(self.fd)
        os.close(self._write_fd)


class OutputClosed(Exception):
    """The reader of stdout went away (``proctap watch | head``): stop quietly."""


@dataclass(frozen=True)
class Subcommand:
    """One ``proctap NAME``: ``add_arguments(parser)`` declares its options, ``run(args)`` returns the exit status."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


# -- argument parsing ------------------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse, but errors are one line: ``proctap: error: <what>; see 'proctap watch --help'``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def pid_arg(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a process id: give a number such as 1234") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a process id: give a positive number")
    return value


def argv_limit_arg(text: str) -> int:
    """``--argv-limit``: bytes, 0 to MAX_ARGV_LIMIT (``4K`` forms allowed)."""
    value = 0 if text.strip() == "0" else size_arg(text)
    if value > MAX_ARGV_LIMIT:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {MAX_ARGV_LIMIT} bytes")
    return value


def comm_arg(text: str) -> str:
    """A program name for ``--comm``: not empty (an empty name would match nothing)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("give a program name, e.g. --comm make (an empty name matches nothing)")
    return text


def seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (e.g. 10 or 0.5)") from None
    if not value >= 0 or value == float("inf"):  # rejects NaN too
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds >= 0")
    return value


def duration_arg(text: str) -> float:
    value = seconds_arg(text)
    if not 0 < value <= MAX_DURATION:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 and at most {MAX_DURATION:g} seconds")
    return value


def latency_arg(text: str) -> float:
    value = seconds_arg(text)
    if value > MAX_LATENCY:
        raise argparse.ArgumentTypeError(f"{text!r} must be at most {MAX_LATENCY:g} seconds")
    return value


_SIZE = re.compile(r"(\d+)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)


def size_arg(text: str) -> int:
    """``262144``, ``256K``, ``8M``, ``1G`` (powers of 1024) -> bytes."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: give bytes, e.g. 262144, 256K or 8M")
    value = int(match.group(1)) << (10 * " kmg".index(match.group(2).lower() or " "))
    if not 0 < value <= MAX_BUFFER:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 bytes and less than 2G")
    return value


def kinds_arg(text: str) -> frozenset[EventKind]:
    try:
        kinds = parse_kinds(text)
    except ProctapError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if kinds == {EventKind.LOST} and "lost" not in text.lower():
        raise argparse.ArgumentTypeError("no event type given: e.g. --events fork,exec,exit or --events all")
    return kinds


def backend_arg(text: str) -> str:
    if text != "auto" and text not in BACKENDS:
        raise argparse.ArgumentTypeError(f"unknown backend {text!r}: choose one of {', '.join(BACKENDS)} or auto")
    return text


def option_arg(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def os_error_message(backend: str, exc: OSError) -> str:
    what = exc.strerror or str(exc)
    if exc.errno in (errno.EPERM, errno.EACCES):
        needs = _PRIVILEGES.get(backend, "more privileges")
        return (
            f"backend {backend} was refused by the kernel ({what}): it needs {needs}; run as root, or see "
            f"'proctap backends' for one that works here"
        )
    return f"backend {backend} failed: {what}; see 'proctap backends' for alternatives"


def stderr(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)


def error(message: str) -> None:
    stderr(f"{PROG}: error: {message}")


def count_arg(text: str) -> int:
    """A whole number >= 0 (``--tree-limit``)."""
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number: give 0 or more") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def add_backend_arguments(parser: argparse.ArgumentParser, *, latency_default: float | None, latency_help: str) -> None:
    """``-b/--backend``, ``--buffer``, ``--latency``, ``--argv-limit`` and ``-o/--backend-option``: the same for every
    subcommand."""
    parser.add_argument(
        "-b",
        "--backend",
        type=backend_arg,
        default="auto",
        metavar="NAME",
        help=f"kernel interface to use: {', '.join(BACKENDS)} or auto (default: auto; see 'proctap backends')",
    )
    parser.add_argument(
        "--buffer",
        type=size_arg,
        metavar="BYTES",
        help="kernel buffer size to ask for, e.g. 8M (default: the backend's own); bigger loses less in storms",
    )
    parser.add_argument(
        "--latency", type=latency_arg, default=latency_default, metavar="SECONDS", help=latency_help
    )
    parser.add_argument(
        "--argv-limit",
        type=argv_limit_arg,
        default=DEFAULT_ARGV_LIMIT,
        metavar="BYTES",
        help=f"bytes of each exec's arguments captured in the kernel (bpf; others read /proc, which has no limit); "
        f"longer ones are marked truncated (default: {DEFAULT_ARGV_LIMIT}, at most {MAX_ARGV_LIMIT})",
    )
    parser.add_argument(
        "-o",
        "--backend-option",
        action="append",
        default=[],
        type=option_arg,
        metavar="NAME=VALUE",
        help="a backend-specific option (repeatable)",
    )


def silence_stdout() -> None:
    """After the reader of stdout went away: point fd 1 at /dev/null so the interpreter's final flush of the
    buffered rest neither fails nor prints "Exception ignored" (the recipe of the Python signal docs)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


def add_switch(parser: argparse.ArgumentParser, name: str, *, default: bool, help: str) -> None:
    """A ``--NAME/--no-NAME`` option."""
    parser.add_argument(name, action=argparse.BooleanOptionalAction, default=default, help=help)
