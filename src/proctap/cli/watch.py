"""``proctap watch``: show task events as they happen, as a table or NDJSON."""

from __future__ import annotations

import argparse
import collections
import json
import os
import pwd
import select
import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

from ..backends import Backend, Feature, choose_backend
from ..errors import ProctapError
from ..events import Event, EventKind
from ..render import JsonRenderer, Renderer, TableRenderer
from ..text import plural, quote_arg
from ..watcher import DEFAULT_LATENCY_S, Watcher, WatchStats, settle_for_storms
from ..where import AUDIT_UNSET
from . import common, export_options
from .common import (
    DEFAULT_EVENTS,
    PROG,
    OutputClosed,
    StopSignals,
    Subcommand,
    comm_arg,
    duration_arg,
    kinds_arg,
    os_error_message,
    pid_arg,
    silence_stdout,
    stderr,
)

__all__ = [
    "SUBCOMMAND",
    "add_context_filter_arguments",
    "add_watch_arguments",
    "context_filters",
    "make_renderer",
    "open_watcher",
    "print_summary",
    "pump",
]

# What each kind needs from a backend, to warn when the chosen backend cannot deliver a requested kind.
_KIND_FEATURE = {
    EventKind.FORK: Feature.FORK,
    EventKind.FORK_FAILED: Feature.FORK_FAILED,
    EventKind.EXEC_FAILED: Feature.EXEC_FAILED,
    EventKind.EXEC: Feature.EXEC,
    EventKind.EXIT: Feature.EXIT,
    EventKind.COMM: Feature.COMM,
    EventKind.UID: Feature.CREDENTIALS,
    EventKind.GID: Feature.CREDENTIALS,
    EventKind.SID: Feature.SID,
    EventKind.PTRACE: Feature.PTRACE,
    EventKind.COREDUMP: Feature.COREDUMP,
}


def add_watch_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose events, backend and filters (shared with other event-showing subcommands)."""
    kinds = ", ".join(k.value for k in EventKind)
    parser.add_argument(
        "-e",
        "--events",
        type=kinds_arg,
        default=kinds_arg(DEFAULT_EVENTS),
        metavar="LIST",
        help=f"comma-separated event types, or 'all' (default: {DEFAULT_EVENTS}; lost events are always shown). "
        f"Types: {kinds}",
    )
    common.add_switch(
        parser,
        "--threads",
        default=False,
        help="also show threads: thread creation as 'clone' and thread exits (default: processes only)",
    )
    parser.add_argument("-p", "--pid", type=pid_arg, help="only this process and its descendants (present and future)")
    parser.add_argument(
        "-c", "--comm", type=comm_arg, metavar="NAME", help="only processes whose name (comm or argv[0]) is NAME"
    )
    add_context_filter_arguments(parser)
    common.add_backend_arguments(
        parser,
        latency_default=DEFAULT_LATENCY_S,
        latency_help=f"how long events may wait in the kernel buffer while they keep coming (default: "
        f"{DEFAULT_LATENCY_S:g}); longer costs the watched tasks less in a fork storm",
    )


def uid_arg(text: str) -> int:
    """``--uid``: a user id or a user name."""
    text = text.strip()
    if text.isdigit():
        value = int(text)
        if value >= AUDIT_UNSET:
            raise argparse.ArgumentTypeError(f"{text!r} is not a user id: give 0 to {AUDIT_UNSET - 1}")
        return value
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise argparse.ArgumentTypeError(f"no user {text!r}: give a user name or a number") from None


def loginuid_arg(text: str) -> int:
    """``--loginuid``: a user id, a user name, or ``unset`` (processes started outside any login)."""
    return AUDIT_UNSET if text.strip() == "unset" else uid_arg(text)


def nonempty_arg(what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"give {what} (an empty one matches nothing)")
        return text.strip()

    return parse


def add_context_filter_arguments(parser: argparse.ArgumentParser) -> None:
    """``--container``, ``--cgroup``, ``--uid``, ``--loginuid``: who and where (every event-showing subcommand)."""
    parser.add_argument(
        "--container",
        type=nonempty_arg("a container id prefix, a name or 'any'"),
        metavar="ID",
        help="only processes in this container: an id prefix (as docker ps shows), a name, or 'any' for every "
        "containerised process",
    )
    parser.add_argument(
        "--cgroup",
        type=nonempty_arg("a cgroup path"),
        metavar="PATH",
        help="only processes in this cgroup v2 cgroup and below it: its path as /proc/PID/cgroup shows it "
        "(/system.slice/cron.service) or its directory",
    )
    parser.add_argument("--uid", type=uid_arg, metavar="USER", help="only processes whose real uid is USER (a name or "
                        "a number)")  # fmt: skip
    parser.add_argument(
        "--loginuid",
        type=loginuid_arg,
        metavar="USER",
        help="only processes of USER's login sessions (the audit login uid, kept through su and sudo; 'unset': "
        "started outside any login)",
    )


def context_filters(args: argparse.Namespace) -> dict[str, object]:
    """The Watcher arguments of :func:`add_context_filter_arguments`' options."""
    return {name: getattr(args, name, None) for name in ("container", "cgroup", "uid", "loginuid")}


def _add_watch_only_arguments(parser: argparse.ArgumentParser) -> None:
    add_watch_arguments(parser)
    parser.add_argument("-j", "--json", action="store_true", help="NDJSON output: one JSON object per event")
    parser.add_argument(
        "-d", "--duration", type=duration_arg, metavar="SECONDS", help="stop after this long (default: until Ctrl-C)"
    )
    parser.add_argument("-w", "--wide", action="store_true", help="do not truncate table lines to the terminal width")
    parser.add_argument(
        "--context",
        action="store_true",
        help="add who and where each process is: its parent (pid, comm, exe), exec_id, cgroup, container, login "
        "uid and session, terminal, cwd and namespaces (JSON fields; in the table '[ctr=... auid=... tty=... "
        "cwd=...] <- parent[pid]')",
    )
    parser.add_argument(
        "--ancestry", action="store_true", help="add the whole chain of ancestors up to pid 1 (implies --context)"
    )
    parser.add_argument(
        "--snapshot",
        action="store_true",
        help="first show every process already running (as 'existing' events, parents first), then the live "
        "stream, with no gap and no duplicate",
    )
    parser.add_argument("--no-header", action="store_true", help="table without its header line")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no start message and no summary on stderr (warnings still print)"
    )
    parser.add_argument(
        "--stats",
        action="store_true",
        help="at the end, print the watcher's counters as one JSON object on stderr (received per kind, delivered, "
        "lost, drains, the backend's own counters)",
    )
    parser.add_argument(
        "--accounting",
        action="store_true",
        help="add CPU, peak RSS, I/O and context switches to exit events (taskstats; needs CAP_NET_ADMIN)",
    )
    export_options.add_export_arguments(parser)


# -- watch -----------------------------------------------------------------------------------------------------


def table_needs_tracking(kinds: frozenset[EventKind]) -> bool:
    """Whether table lines for these kinds need the process table (an exiting process's command, parent and
    lifetime; a fork's or a rename's command).  Exec lines carry their own, so ``-e exec`` keeps the backend's kernel
    filter (the table would make every backend deliver forks and exits too)."""
    return bool(kinds - {EventKind.EXEC, EventKind.LOST})


def open_watcher(
    args: argparse.Namespace, *, track: bool, accounting: bool = False, snapshot: bool = False, cache: bool = True
) -> Watcher:
    """A Watcher from the options of :func:`add_watch_arguments`; warns on stderr about kinds the backend lacks."""
    backend = choose_backend(args.backend)
    _warn_unsupported(backend, args.events, args)
    try:
        watcher = Watcher(
            args.events,
            backend,
            pid=args.pid,
            threads=args.threads,
            comm=args.comm,
            buffer_bytes=args.buffer,
            latency=args.latency,
            argv_limit=args.argv_limit,
            track=track,
            snapshot=snapshot,
            cache=cache,
            accounting=accounting,
            options=args.backend_option,
            context=bool(getattr(args, "context", False) or getattr(args, "ancestry", False)),
            **context_filters(args),  # type: ignore[arg-type]
        )
    except OSError as exc:
        raise ProctapError(os_error_message(backend.name, exc)) from None
    settle_for_storms()
    return watcher


def _warn_unsupported(backend: type[Backend], kinds: frozenset[EventKind], args: argparse.Namespace) -> None:
    """Say so when the user asked for something the backend cannot see (not for the default set)."""
    missing = [k.value for k in _ordered(kinds) if k in _KIND_FEATURE and _KIND_FEATURE[k] not in backend.features]
    if kinds in (kinds_arg(DEFAULT_EVENTS), frozenset(EventKind)):  # defaults and "all" mean "what you can"
        missing = []
    if args.threads and Feature.THREADS not in backend.features:
        missing.append("threads")
    if missing:
        stderr(f"{PROG}: warning: backend {backend.name} cannot report {', '.join(missing)} (see 'proctap backends')")


def _ordered(kinds: frozenset[EventKind]) -> list[EventKind]:
    return [k for k in EventKind if k in kinds]


def make_renderer(args: argparse.Namespace, stream: TextIO, watcher: Watcher | None = None) -> Renderer:
    """JSON or table renderer for ``stream`` per ``--json`` / ``--wide`` / ``--context`` / ``--ancestry``."""
    ancestry = bool(getattr(args, "ancestry", False))
    context = watcher.processes if watcher is not None and (ancestry or getattr(args, "context", False)) else None
    if getattr(args, "json", False):
        return JsonRenderer(stream, context=context, ancestry=ancestry)
    tty = stream.isatty()
    width = None if getattr(args, "wide", False) or not tty else shutil.get_terminal_size().columns
    color = tty and "NO_COLOR" not in os.environ
    return TableRenderer(stream, width=width, color=color, context=context, ancestry=ancestry)


def pump(
    watcher: Watcher,
    renderer: Renderer,
    *,
    duration: float | None = None,
    output: TextIO | None = None,
    counts: dict[str, int] | None = None,
    stop: StopSignals | None = None,
    sink: Callable[[list[Event]], list[Event]] | None = None,
    on_signal: Callable[[], bool] | None = None,
) -> None:
    """Render events until ``duration`` elapses (None: forever) or ``stop`` caught a signal; raises OutputClosed when
    ``output``'s reader goes away.  ``sink`` gets each batch after the watcher (the exporters) and may add events to
    show (their losses); ``on_signal()`` True means the signal was dealt with (SIGHUP reopened --output): go on.

    Batches come from the watcher's drain loop (:meth:`Watcher.read`), each written with one write call; the signal
    pipe and the output's error state (POLLERR on the write end of a closed pipe) cut its waits short, so a closed
    pipe is noticed at once rather than at the next event.
    """
    deadline = None if duration is None else time.monotonic() + duration
    wake: list[int | tuple[int, int]] = [] if stop is None else [stop.fd]
    out_fd = _pollable_fd(output)
    if out_fd is not None:
        wake.append((out_fd, 0))  # only POLLERR/POLLHUP: the reader went away
    while stop is None or stop.signum is None or (on_signal is not None and on_signal()):
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return
        events = watcher.read(remaining, wake=wake)
        if sink is not None:
            extra = sink(events)
            if extra:
                events = events + extra
        if events:
            renderer.render_events(events)
            if counts is not None:
                by_class: collections.Counter[type[Event]] = collections.Counter(map(type, events))
                for cls, n in by_class.items():
                    kind = cls.kind.value
                    counts[kind] = counts.get(kind, 0) + n
        elif out_fd is not None and _output_gone(out_fd):
            raise OutputClosed


def _output_gone(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, 0)
    return any(revents & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _, revents in poller.poll(0))


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
            parts.append(plural(stats.lost, "event"))
        if stats.lost_unknown:
            parts.append(f"{plural(stats.lost_unknown, 'overrun')} of unknown size")
        lost = "LOST " + " + ".join(parts)
    else:
        lost = "nothing lost"
    shown_text = f"{plural(total, 'event')} shown" + (f" ({by_kind})" if by_kind else "")
    stderr(f"{PROG}: {elapsed:.2f}s with backend {stats.backend_name}: {shown_text}; {lost}")


def run_watch(args: argparse.Namespace) -> int:
    out = export_options.open_output(args.output) or sys.stdout
    export = None
    shown: dict[str, int] = {}
    with StopSignals() as stop:
        context = args.context or args.ancestry
        track = context or (not args.json and table_needs_tracking(args.events))
        # NDJSON without context only forwards events: no process cache to feed (the table's lines need it)
        watcher = open_watcher(
            args, track=track, accounting=args.accounting, snapshot=args.snapshot, cache=track or args.comm is not None
        )
        renderer = make_renderer(args, out, watcher)
        started = time.monotonic()
        try:
            export = export_options.WatchExport.open(args, watcher.backend_name)
            if not args.quiet:
                stderr(_start_message(args, watcher.backend_name))
                if export is not None:
                    stderr(export.start_note())
            if not args.json and not args.no_header:
                renderer.header()
            pump(
                watcher, renderer, duration=args.duration, output=out, counts=shown, stop=stop,
                sink=None if export is None else export.sink.consume,
                on_signal=lambda: export_options.handle_hangup(stop, out),
            )  # fmt: skip
        except BrokenPipeError:
            raise
        except OSError as exc:  # writing failed: a full disk, a vanished terminal...
            silence_stdout()
            raise ProctapError(f"cannot write the output: {exc.strerror or exc}") from None
        finally:
            watcher.close()
            exported = {} if export is None else export.close(renderer, shown, quiet=args.quiet)
        stats = watcher.stats()
        if not args.quiet:
            print_summary(stats, shown, time.monotonic() - started)
        if args.stats:
            stderr(json.dumps({**stats.as_dict(), **exported}, sort_keys=True))
    return 0 if stop.signum is None else 128 + stop.signum


def _start_message(args: argparse.Namespace, backend: str) -> str:
    kinds = ",".join(k.value for k in _ordered(args.events))
    scope = f" of pid {args.pid} and its descendants" if args.pid else ""
    scope += f" named {quote_arg(args.comm)}" if args.comm else ""
    scope += _context_scope(args)
    scope += " (threads included)" if args.threads else ""
    until = f" for {args.duration:g}s" if args.duration is not None else " (Ctrl-C to stop)"
    return f"{PROG}: watching {kinds}{scope} with backend {backend}{until}"


def _context_scope(args: argparse.Namespace) -> str:
    """`` in container X``, `` in cgroup /a``, `` of uid N``, `` of login uid N`` for the start message."""
    scope = ""
    container = getattr(args, "container", None)
    if container:
        scope += " in any container" if container == "any" else f" in container {quote_arg(container)}"
    if getattr(args, "cgroup", None):
        scope += f" in cgroup {quote_arg(args.cgroup)}"
    if getattr(args, "uid", None) is not None:
        scope += f" of uid {args.uid}"
    loginuid = getattr(args, "loginuid", None)
    if loginuid is not None:
        scope += " outside any login" if loginuid == AUDIT_UNSET else f" of login uid {loginuid}"
    return scope


SUBCOMMAND = Subcommand(
    "watch",
    "show task events as they happen (a table, or NDJSON with --json)",
    _add_watch_only_arguments,
    run_watch,
    description="Show fork/exec/exit (and more) of every task as they happen. The summary goes to stderr.",
)
