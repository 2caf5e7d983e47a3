"""The command line: ``proctap watch``, ``proctap backends``, ``proctap --version``.

Adding a subcommand (e.g. ``proctap run`` in its own module): define ``SUBCOMMAND = Subcommand(name, help,
add_arguments, run)`` there (``add_arguments(parser)`` declares its options, ``run(args) -> int`` does the work and
returns the exit status), then list it in :func:`subcommands` below (import it inside that function, so your module
may itself import helpers from here).  Reusable pieces for a subcommand that shows events: :func:`add_watch_arguments`
(the event and filter options of ``watch``), :func:`open_watcher`, :func:`make_renderer`, :func:`pump` (the output
loop: batching, duration, closed-pipe detection), :func:`print_summary`.  :func:`main` turns ProctapError, OSError,
Ctrl-C, SIGTERM and a closed output pipe into one-line messages and exit statuses; a subcommand just raises.

Exit statuses: 0 success; 2 error ("proctap: error: ..." on stderr, bad flags included); 1 internal error (a bug:
one line too, PROCTAP_DEBUG=1 shows the traceback); 128+N when ended by signal N
(130 Ctrl-C, 143 SIGTERM, 129 SIGHUP) after printing the summary; 141 when the reader of stdout went away (as if
killed by SIGPIPE, quietly).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import select
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn, TextIO

from . import __version__
from .backends import AUTO_ORDER, BACKENDS, Availability, Backend, Feature, backend_class, choose_backend, probe_all
from .errors import BackendUnavailable, ProctapError
from .events import EventKind
from .render import JsonRenderer, Renderer, TableRenderer
from .watcher import Watcher, WatchStats, parse_kinds

__all__ = [
    "DEFAULT_EVENTS",
    "Subcommand",
    "add_watch_arguments",
    "main",
    "make_renderer",
    "open_watcher",
    "print_summary",
    "pump",
    "subcommands",
]

PROG = "proctap"
DEFAULT_EVENTS = "fork,exec,exit,fork_failed"  # Lost is always added
EXIT_ERROR = 2
EXIT_INTERNAL = 1
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
MAX_DURATION = 1e7  # seconds (115 days): keeps every deadline representable
MAX_LATENCY = 10.0  # seconds: more would hold events back for longer than anyone watching wants
MAX_BUFFER = (1 << 31) - 1  # socket buffer sizes are C ints

# What each kind needs from a backend, to warn when the chosen backend cannot deliver a requested kind.
_KIND_FEATURE = {
    EventKind.FORK: Feature.FORK,
    EventKind.FORK_FAILED: Feature.FORK_FAILED,
    EventKind.EXEC: Feature.EXEC,
    EventKind.EXIT: Feature.EXIT,
    EventKind.COMM: Feature.COMM,
    EventKind.UID: Feature.CREDENTIALS,
    EventKind.GID: Feature.CREDENTIALS,
    EventKind.SID: Feature.SID,
    EventKind.PTRACE: Feature.PTRACE,
    EventKind.COREDUMP: Feature.COREDUMP,
}

# The privileges each backend needs, for the message when the kernel says EPERM/EACCES.
_PRIVILEGES = {
    "bpf": "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)",
    "netlink": "CAP_NET_ADMIN",
    "tracefs": "root (CAP_SYS_ADMIN) and a mounted tracefs",
    "kprobe": "root (CAP_SYS_ADMIN) and a mounted tracefs",
    "proc": "read access to /proc",
}


class StopSignals:
    """While active, SIGINT, SIGTERM and SIGHUP only record that we should stop (``signum``) and wake :func:`pump`
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


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line: ``proctap: error: <what>; see 'proctap watch --help'``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number: give a positive integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


def _pid(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a process id: give a number such as 1234") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a process id: give a positive number")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (e.g. 10 or 0.5)") from None
    if not value >= 0 or value == float("inf"):  # rejects NaN too
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds >= 0")
    return value


def _duration(text: str) -> float:
    value = _seconds(text)
    if not 0 < value <= MAX_DURATION:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 and at most {MAX_DURATION:g} seconds")
    return value


def _latency(text: str) -> float:
    value = _seconds(text)
    if value > MAX_LATENCY:
        raise argparse.ArgumentTypeError(f"{text!r} must be at most {MAX_LATENCY:g} seconds")
    return value


_SIZE = re.compile(r"(\d+)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)


def _size(text: str) -> int:
    """``262144``, ``256K``, ``8M``, ``1G`` (powers of 1024) -> bytes."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: give bytes, e.g. 262144, 256K or 8M")
    value = int(match.group(1)) << (10 * " kmg".index(match.group(2).lower() or " "))
    if not 0 < value <= MAX_BUFFER:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 bytes and less than 2G")
    return value


def _kinds(text: str) -> frozenset[EventKind]:
    try:
        kinds = parse_kinds(text)
    except ProctapError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if kinds == {EventKind.LOST} and "lost" not in text.lower():
        raise argparse.ArgumentTypeError("no event type given: e.g. --events fork,exec,exit or --events all")
    return kinds


def _backend_name(text: str) -> str:
    if text != "auto" and text not in BACKENDS:
        raise argparse.ArgumentTypeError(f"unknown backend {text!r}: choose one of {', '.join(BACKENDS)} or auto")
    return text


def add_watch_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose events, backend and filters (shared with other event-showing subcommands)."""
    kinds = ", ".join(k.value for k in EventKind)
    parser.add_argument(
        "-e",
        "--events",
        type=_kinds,
        default=_kinds(DEFAULT_EVENTS),
        metavar="LIST",
        help=f"comma-separated event types, or 'all' (default: {DEFAULT_EVENTS}; lost events are always shown). "
        f"Types: {kinds}",
    )
    parser.add_argument(
        "--threads",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also show threads: thread creation as 'clone' and thread exits (default: processes only)",
    )
    parser.add_argument("-p", "--pid", type=_pid, help="only this process and its descendants (present and future)")
    parser.add_argument("-c", "--comm", metavar="NAME", help="only processes whose name (comm or argv[0]) is NAME")
    parser.add_argument(
        "-b",
        "--backend",
        type=_backend_name,
        default="auto",
        metavar="NAME",
        help=f"kernel interface to use: {', '.join(BACKENDS)} or auto (default: auto; see 'proctap backends')",
    )
    parser.add_argument(
        "--buffer",
        type=_size,
        metavar="BYTES",
        help="kernel buffer size to ask for, e.g. 8M (default: the backend's own); bigger loses less in storms",
    )
    parser.add_argument(
        "--latency",
        type=_latency,
        default=0.01,
        metavar="SECONDS",
        help="how long events may wait in the kernel buffer while they keep coming (default: 0.01); longer costs "
        "the watched tasks less in a fork storm",
    )
    parser.add_argument(
        "-o",
        "--backend-option",
        action="append",
        default=[],
        type=_option,
        metavar="NAME=VALUE",
        help="a backend-specific option (repeatable)",
    )


def _option(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def _add_watch_only_arguments(parser: argparse.ArgumentParser) -> None:
    add_watch_arguments(parser)
    parser.add_argument("-j", "--json", action="store_true", help="NDJSON output: one JSON object per event")
    parser.add_argument(
        "-d", "--duration", type=_duration, metavar="SECONDS", help="stop after this long (default: until Ctrl-C)"
    )
    parser.add_argument("-w", "--wide", action="store_true", help="do not truncate table lines to the terminal width")
    parser.add_argument("--no-header", action="store_true", help="table without its header line")
    parser.add_argument("-q", "--quiet", action="store_true", help="no start message and no summary on stderr")


# -- watch -----------------------------------------------------------------------------------------------------


def open_watcher(args: argparse.Namespace, *, track: bool) -> Watcher:
    """A Watcher from the options of :func:`add_watch_arguments`; warns on stderr about kinds the backend lacks."""
    if args.pid is not None and not os.path.exists(f"/proc/{args.pid}"):
        raise ProctapError(f"no process with pid {args.pid}: give the pid of a running process")
    backend = choose_backend(args.backend)
    _warn_unsupported(backend, args.events, args)
    try:
        watcher = Watcher(
            args.events,
            backend.name,
            pid=args.pid,
            threads=args.threads,
            comm=args.comm,
            buffer_bytes=args.buffer,
            latency=args.latency,
            track=track,
            options=args.backend_option,
        )
    except OSError as exc:
        raise ProctapError(_os_error_message(backend.name, exc)) from None
    if track:
        _learn_running_processes(watcher)
    return watcher


def _learn_running_processes(watcher: Watcher) -> None:
    """Read the processes that exist now into the process table, so that the exit of one that started before us
    still shows its parent and command line (at its exit, /proc no longer has them).  Once, at start."""
    table = watcher.table
    if table is None:
        return
    tracked = watcher.filter.tracked
    pids = tracked if tracked is not None else (int(name) for name in os.listdir("/proc") if name.isdigit())
    for pid in list(pids):
        table.lookup(pid)


def _warn_unsupported(backend: type[Backend], kinds: frozenset[EventKind], args: argparse.Namespace) -> None:
    """Say so when the user asked for something the backend cannot see (not for the default set)."""
    if getattr(args, "quiet", False):
        return
    missing = [k.value for k in _ordered(kinds) if k in _KIND_FEATURE and _KIND_FEATURE[k] not in backend.features]
    if kinds in (_kinds(DEFAULT_EVENTS), frozenset(EventKind)):  # defaults and "all" mean "what you can"
        missing = []
    if args.threads and Feature.THREADS not in backend.features:
        missing.append("threads")
    if missing:
        _stderr(f"{PROG}: warning: backend {backend.name} cannot report {', '.join(missing)} (see 'proctap backends')")


def _ordered(kinds: frozenset[EventKind]) -> list[EventKind]:
    return [k for k in EventKind if k in kinds]


def _os_error_message(backend: str, exc: OSError) -> str:
    what = exc.strerror or str(exc)
    if exc.errno in (errno.EPERM, errno.EACCES):
        needs = _PRIVILEGES.get(backend, "more privileges")
        return (
            f"backend {backend} was refused by the kernel ({what}): it needs {needs}; run as root, or see "
            f"'proctap backends' for one that works here"
        )
    return f"backend {backend} failed: {what}; see 'proctap backends' for alternatives"


def make_renderer(args: argparse.Namespace, stream: TextIO) -> Renderer:
    """JSON or table renderer for ``stream`` per ``--json`` / ``--wide``."""
    if getattr(args, "json", False):
        return JsonRenderer(stream)
    tty = stream.isatty()
    width = None if getattr(args, "wide", False) or not tty else shutil.get_terminal_size().columns
    return TableRenderer(stream, width=width, color=tty and "NO_COLOR" not in os.environ)


def pump(
    watcher: Watcher,
    renderer: Renderer,
    *,
    duration: float | None = None,
    output: TextIO | None = None,
    counts: dict[str, int] | None = None,
    stop: StopSignals | None = None,
) -> None:
    """Render events until ``duration`` elapses (None: forever) or ``stop`` caught a signal; raises OutputClosed when
    ``output``'s reader goes away.

    Each batch the watcher returns is written with one write call.  While events keep coming it sleeps
    ``watcher.latency`` between drains (no wakeup per event); when idle it blocks in poll, which also notices a
    closed output pipe at once (POLLERR on the write end) rather than at the next event.
    """
    deadline = None if duration is None else time.monotonic() + duration
    poller = select.poll()
    poller.register(watcher.fileno(), select.POLLIN)
    napper = select.poll()  # the sleep between busy drains: only a signal cuts it short
    if stop is not None:
        poller.register(stop.fd, select.POLLIN)
        napper.register(stop.fd, select.POLLIN)
    out_fd = _pollable_fd(output)
    if out_fd is not None:
        poller.register(out_fd, 0)  # only POLLERR/POLLHUP: the reader went away
    while stop is None or stop.signum is None:
        pairs = watcher.read_with_info(0)
        if pairs:
            renderer.render_batch(pairs)
            if counts is not None:
                for ev, _ in pairs:
                    kind = ev.kind.value
                    counts[kind] = counts.get(kind, 0) + 1
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return
        if pairs:
            nap = watcher.latency if remaining is None else min(watcher.latency, remaining)
            napper.poll(_milliseconds(nap))
            continue
        for fd, revents in poller.poll(None if remaining is None else _milliseconds(remaining)):
            if fd == out_fd and revents & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                raise OutputClosed


def _milliseconds(seconds: float) -> int:
    """A poll() timeout: rounded up so we never wake just before a deadline, within a C int."""
    return min(int(seconds * 1000) + 1, (1 << 31) - 1)


def _pollable_fd(stream: TextIO | None) -> int | None:
    if stream is None:
        return None
    try:
        fd = stream.fileno()
        os.fstat(fd)
    except (OSError, ValueError):
        return None
    return fd


def print_summary(stats: WatchStats, shown: dict[str, int], elapsed: float) -> None:
    """One line on stderr: how long, which backend, what was shown by kind, and what the kernel lost."""
    total = sum(shown.values())
    by_kind = ", ".join(f"{k.value} {shown[k.value]}" for k in EventKind if k.value in shown)
    if stats.lost or stats.lost_unknown:
        parts = []
        if stats.lost:
            parts.append(f"{stats.lost} events")
        if stats.lost_unknown:
            parts.append(f"{stats.lost_unknown} overrun{'s' if stats.lost_unknown > 1 else ''} of unknown size")
        lost = "LOST " + " + ".join(parts)
    else:
        lost = "nothing lost"
    shown_text = f"{total} events shown" + (f" ({by_kind})" if by_kind else "")
    _stderr(f"{PROG}: {elapsed:.2f}s with backend {stats.backend_name}: {shown_text}; {lost}")


def run_watch(args: argparse.Namespace) -> int:
    out = sys.stdout
    renderer = make_renderer(args, out)
    shown: dict[str, int] = {}
    with StopSignals() as stop:
        watcher = open_watcher(args, track=not args.json)
        started = time.monotonic()
        try:
            if not args.quiet:
                _stderr(_start_message(args, watcher.backend_name))
            if not args.json and not args.no_header:
                renderer.header()
            pump(watcher, renderer, duration=args.duration, output=out, counts=shown, stop=stop)
        except BrokenPipeError:
            raise
        except OSError as exc:  # writing failed: a full disk, a vanished terminal...
            _silence_stdout()
            raise ProctapError(f"cannot write the output: {exc.strerror or exc}") from None
        finally:
            watcher.close()
        if not args.quiet:
            print_summary(watcher.stats(), shown, time.monotonic() - started)
    return 0 if stop.signum is None else 128 + stop.signum


def _start_message(args: argparse.Namespace, backend: str) -> str:
    kinds = ",".join(k.value for k in _ordered(args.events))
    scope = f" of pid {args.pid} and its descendants" if args.pid else ""
    scope += f" named {args.comm}" if args.comm else ""
    scope += " (threads included)" if args.threads else ""
    until = f" for {args.duration:g}s" if args.duration is not None else " (Ctrl-C to stop)"
    return f"{PROG}: watching {kinds}{scope} with backend {backend}{until}"


# -- backends --------------------------------------------------------------------------------------------------


def _add_backends_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-j", "--json", action="store_true", help="one JSON object describing every backend")


def _backend_rows() -> tuple[list[dict[str, object]], str | None]:
    availability: dict[str, Availability] = probe_all()
    auto = next((name for name in AUTO_ORDER if availability.get(name)), None)
    rows = []
    for name in BACKENDS:
        avail = availability[name]
        try:
            cls = backend_class(name)
            features = sorted(f.value for f in cls.features)
            description = cls.description
        except ProctapError:
            features, description = [], ""
        rows.append(
            {
                "name": name,
                "available": avail.ok,
                "reason": None if avail.ok else avail.reason,
                "auto": name == auto,
                "description": description,
                "features": features,
            }
        )
    return rows, auto


def run_backends(args: argparse.Namespace) -> int:
    rows, auto = _backend_rows()
    if args.json:
        sys.stdout.write(json.dumps({"auto": auto, "backends": rows}) + "\n")
    else:
        width = max(len(name) for name in BACKENDS)
        lines = []
        for row in rows:
            mark = "*" if row["auto"] else " "
            state = "yes" if row["available"] else "no "
            detail = (row["description"] or "") if row["available"] else f"{row['reason']}"
            if row["auto"]:
                detail = f"(auto) {detail}".rstrip()
            lines.append(f"{mark} {row['name']:<{width}}  {state}  {detail}".rstrip())
        if auto is None:
            lines.append("no backend works here: see the reasons above")
        sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    return 0 if auto is not None else 1


# -- the subcommand table and main -----------------------------------------------------------------------------

WATCH = Subcommand(
    "watch",
    "show task events as they happen (a table, or NDJSON with --json)",
    _add_watch_only_arguments,
    run_watch,
    description="Show fork/exec/exit (and more) of every task as they happen. The summary goes to stderr.",
)
BACKENDS_CMD = Subcommand(
    "backends",
    "list the kernel interfaces proctap can use and whether each works here",
    _add_backends_arguments,
    run_backends,
    description="One line per backend: '*' marks the one 'auto' picks; 'no' lines say why and what would help. "
    "Exit status 1 when none works.",
)


def subcommands() -> list[Subcommand]:
    """Every subcommand, in the order of ``proctap --help``.  Add yours here (import it inside this function)."""
    return [WATCH, BACKENDS_CMD]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Know the moment a Linux task is created, exec'd or destroyed.")
    parser.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in subcommands():
        child = sub.add_parser(command.name, help=command.help, description=command.description or command.help)
        command.add_arguments(child)
        child.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``proctap`` console script; returns the exit status."""
    warnings.showwarning = _show_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        status: int = args._run(args)
        sys.stdout.flush()
        return status
    except (BrokenPipeError, OutputClosed):
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except BackendUnavailable as exc:
        _error(f"{exc}; see 'proctap backends'" if "proctap backends" not in str(exc) else str(exc))
    except ProctapError as exc:
        _error(str(exc))
    except OSError as exc:
        _error(_os_error_message(getattr(args, "backend", "auto"), exc))
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Exception as exc:  # a bug: still one line, unless asked for the traceback
        if os.environ.get("PROCTAP_DEBUG"):
            raise
        _error(
            f"internal error: {type(exc).__name__}: {exc}; please report it "
            f"(PROCTAP_DEBUG=1 shows the traceback)"
        )
        return EXIT_INTERNAL
    return EXIT_ERROR


def _silence_stdout() -> None:
    """After the reader of stdout went away: point fd 1 at /dev/null so the interpreter's final flush of the
    buffered rest neither fails nor prints "Exception ignored" (the recipe of the Python signal docs)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Library warnings (e.g. a capped kernel buffer) as one line, without the source location."""
    _stderr(f"{PROG}: warning: {message}")


def _stderr(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)


def _error(message: str) -> None:
    _stderr(f"{PROG}: error: {message}")
