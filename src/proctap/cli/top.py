"""``proctap top``: a live view of who is spawning what (curses), or one snapshot (``--once``, a table or JSON).

The events come from the watcher's one drain loop (:meth:`proctap.Watcher.read`), which also wakes for keys, the
signal pipe and redraws; :class:`proctap.top.aggregate.Aggregator` counts them, :mod:`proctap.top.screen` shows them.
"""

from __future__ import annotations

import argparse
import contextlib
import curses
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from ..backends import Feature
from ..errors import ProctapError
from ..events import EventKind, json_text
from ..linux.cgroups import CgroupPaths
from ..text import quote_arg
from ..top.aggregate import Aggregator, Sort, View
from ..top.screen import Screen, State, compose
from ..top.table import VIEW_TITLES, header_lines, table_lines
from ..watcher import Watcher
from .common import PROG, StopSignals, Subcommand, count_arg, duration_arg, seconds_arg, stderr
from .watch import add_watch_arguments, open_watcher

__all__ = ["SUBCOMMAND"]

DEFAULT_INTERVAL = 0.5  # seconds between redraws
MIN_INTERVAL = 0.2
DEFAULT_ONCE_S = 5.0
DEFAULT_ONCE_LIMIT = 20
FINAL_DRAIN_S = 0.25  # --once: how long to keep reading after the end, for events still on their way
# Counters of the header and the feature the backend needs for each (a counter it cannot report reads "-").
_COUNTER_NEEDS = {
    "forks": (Feature.FORK, EventKind.FORK),
    "execs": (Feature.EXEC, EventKind.EXEC),
    "exits": (Feature.EXIT, EventKind.EXIT),
    "fork_failed": (Feature.FORK_FAILED, EventKind.FORK_FAILED),
    "threads": (Feature.THREADS, EventKind.FORK),
}


def interval_arg(text: str) -> float:
    value = seconds_arg(text)
    if not MIN_INTERVAL <= value <= 60:
        raise argparse.ArgumentTypeError(f"{text!r} must be {MIN_INTERVAL:g} to 60 seconds")
    return value


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    add_watch_arguments(parser)
    for action in parser._actions:  # top counts threads in its header: on by default here
        if action.dest == "threads":
            action.default = True
            action.help = "count thread creation too (the header's threads/s; default: on)"
    parser.add_argument(
        "--once",
        action="store_true",
        help=f"collect for --duration (default {DEFAULT_ONCE_S:g}s), print one snapshot and exit; the default when "
        "stdout is not a terminal",
    )
    parser.add_argument("-j", "--json", action="store_true", help="the snapshot as one JSON object (implies --once)")
    parser.add_argument(
        "-d",
        "--duration",
        type=duration_arg,
        metavar="SECONDS",
        help=f"how long to collect with --once (default {DEFAULT_ONCE_S:g}); live: quit after this long",
    )
    parser.add_argument(
        "--view",
        choices=[*(v.value for v in View), "all"],
        default=View.PARENT.value,
        help="the view to start with (default: parent); with --once, the one printed ('all': every view)",
    )
    parser.add_argument(
        "--sort", choices=[s.value for s in Sort], default=Sort.RATE.value, help="sort rows by rate or total"
    )
    parser.add_argument(
        "-n",
        "--limit",
        type=count_arg,
        metavar="ROWS",
        help=f"rows per view with --once (default {DEFAULT_ONCE_LIMIT}; 0: all)",
    )
    parser.add_argument(
        "--interval",
        type=interval_arg,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help=f"time between redraws (default {DEFAULT_INTERVAL:g}, at least {MIN_INTERVAL:g})",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="with --once, no start message on stderr")


def run_top(args: argparse.Namespace) -> int:
    once = args.once or args.json or not sys.stdout.isatty()
    if not once and args.view == "all":
        raise ProctapError("--view all is for --once: the live view shows one view at a time (keys switch)")
    with StopSignals() as stop:
        watcher = open_watcher(args, track=False)
        try:
            aggregator = Aggregator(time.monotonic_ns(), names=_comm_lookup(watcher), cgroups=CgroupPaths())
            if once:
                return _run_once(args, watcher, aggregator, stop)
            return _run_live(args, watcher, aggregator, stop)
        finally:
            watcher.close()


def _comm_lookup(watcher: Watcher) -> Callable[[int], str | None]:
    """A spawner's comm when the events did not say it: from the watcher's process cache (which reads /proc once for
    a process older than the watch, and keeps an exited one for its grace period)."""

    def comm(pid: int) -> str | None:
        proc = watcher.processes.lookup(pid)
        return proc.comm if proc is not None else None

    return comm


def _unavailable(watcher: Watcher, args: argparse.Namespace) -> frozenset[str]:
    features = watcher.backend.features
    kinds = args.events
    out = {name for name, (feature, kind) in _COUNTER_NEEDS.items() if feature not in features or kind not in kinds}
    if not args.threads:
        out.add("threads")
    return frozenset(out)


def _scope(args: argparse.Namespace) -> str:
    scope = f" of pid {args.pid} and its descendants" if args.pid else ""
    scope += f" named {quote_arg(args.comm)}" if args.comm else ""
    return scope


# -- --once -------------------------------------------------------------------------------------------------------


def _run_once(args: argparse.Namespace, watcher: Watcher, aggregator: Aggregator, stop: StopSignals) -> int:
    duration = args.duration if args.duration is not None else DEFAULT_ONCE_S
    if not args.quiet:
        stderr(f"{PROG}: top{_scope(args)} with backend {watcher.backend_name} for {duration:g}s")
    deadline = time.monotonic() + duration
    wake = [stop.fd]
    while stop.signum is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        events = watcher.read(remaining, wake=wake)
        if events:
            aggregator.feed(events, time.monotonic_ns())
    # What happened before the end but is not readable yet: tracefs, for one, makes a CPU's last events readable only
    # some tens of milliseconds later.
    end = time.monotonic() + FINAL_DRAIN_S
    while (remaining := end - time.monotonic()) > 0:
        aggregator.feed(watcher.read(remaining, wake=[]), time.monotonic_ns())
    now_ns = time.monotonic_ns()
    stats = watcher.stats()
    limit = args.limit if args.limit is not None else DEFAULT_ONCE_LIMIT
    sort = Sort(args.sort)
    out = sys.stdout
    if args.json:
        doc: dict[str, Any] = {
            "backend": watcher.backend_name,
            "pid": args.pid,
            "comm": None if args.comm is None else json_text(args.comm),
            "lost": stats.lost,
            "lost_unknown": stats.lost_unknown,
            "unavailable": sorted(_unavailable(watcher, args)),
        }
        doc.update(aggregator.snapshot(now_ns, sort=sort, limit=limit or None))
        out.write(json.dumps(doc, ensure_ascii=False) + "\n")
    else:
        width = shutil.get_terminal_size().columns if out.isatty() else None
        head = aggregator.header(now_ns)
        lines = [
            f"proctap top: {head.elapsed_s:.2f}s with backend {watcher.backend_name}{_scope(args)}, sorted by "
            f"{sort.value}",
            "",
            *header_lines(head, width, unavailable=_unavailable(watcher, args)),
        ]
        views = list(View) if args.view == "all" else [View(args.view)]
        for view in views:
            rows = aggregator.rows(view, now_ns, sort=sort, limit=limit or None)
            lines += ["", f"{VIEW_TITLES[view]}:"] if len(views) > 1 else [""]
            lines += table_lines(rows, view, width)
        out.write("\n".join(lines) + "\n")
    out.flush()
    return 0 if stop.signum is None else 128 + stop.signum


# -- live ---------------------------------------------------------------------------------------------------------


def _run_live(args: argparse.Namespace, watcher: Watcher, aggregator: Aggregator, stop: StopSignals) -> int:
    state = State(view=View(args.view), sort=Sort(args.sort))
    unavailable = _unavailable(watcher, args)
    deadline = None if args.duration is None else time.monotonic() + args.duration
    wake: list[int] = [stop.fd]
    if sys.stdin.isatty():
        wake.append(sys.stdin.fileno())
    # A SIGWINCH handler of ours: its signal number lands in the StopSignals wakeup pipe, which wakes the drain loop
    # at once (curses' own handler would only be noticed at the next key or redraw).
    previous = signal.signal(signal.SIGWINCH, _ignore)
    try:
        with _screen() as screen:
            next_draw = 0.0
            while stop.signum is None and not state.quit:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                timeout = max(next_draw - now, 0.0)
                if deadline is not None:
                    timeout = min(timeout, deadline - now)
                events = watcher.read(timeout, wake=wake)
                if events:
                    aggregator.feed(events, time.monotonic_ns())
                dirty = False
                if signal.SIGWINCH in _drain_signals(stop.fd):
                    screen.resize()
                    dirty = True
                for ch in screen.read_keys():
                    if ch == curses.KEY_RESIZE:
                        screen.resize()
                    dirty = state.key(ch) or dirty
                if state.quit:
                    break
                now = time.monotonic()
                if dirty or (now >= next_draw and not state.paused):
                    height, width = screen.size
                    frame = compose(
                        aggregator, state, time.monotonic_ns(), height, width,
                        backend=watcher.backend_name, unavailable=unavailable,
                    )  # fmt: skip
                    screen.draw(frame, clear=state.clear)
                    state.clear = False
                    next_draw = now + args.interval
                elif state.paused and now >= next_draw:
                    next_draw = now + args.interval
    finally:
        if previous is not None:  # None: a handler not installed from Python, which cannot be put back
            signal.signal(signal.SIGWINCH, previous)
    return 0 if stop.signum is None else 128 + stop.signum


def _ignore(signum: int, frame: object) -> None:
    """The SIGWINCH handler: nothing to do here, the wakeup pipe carries the news."""


def _drain_signals(fd: int) -> set[int]:
    """The signal numbers written to the StopSignals wakeup pipe since the last call (it is non-blocking)."""
    seen: set[int] = set()
    with contextlib.suppress(BlockingIOError, InterruptedError):
        while chunk := os.read(fd, 512):
            seen.update(chunk)
    return seen


@contextlib.contextmanager
def _screen() -> Any:
    color = "NO_COLOR" not in os.environ
    try:
        screen = Screen(color=color).__enter__()
    except curses.error as exc:
        term = os.environ.get("TERM")
        raise ProctapError(
            f"cannot use this terminal (TERM={quote_arg(term) if term else 'unset'}: {exc}); "
            "use --once for a snapshot without a screen"
        ) from None
    try:
        yield screen
    finally:
        screen.__exit__(None, None, None)


SUBCOMMAND = Subcommand(
    "top",
    "a live view of who is spawning what: the busiest parents, programs, cgroups and failures",
    _add_arguments,
    run_top,
    description="A live terminal view of who is spawning what, right now: rates of forks, execs, exits, failed forks "
    "and threads, and the top spawners (by parent, program, cgroup, or failures; keys switch, ? for help). "
    "--once (the default when stdout is not a terminal) prints one snapshot as a table or --json.",
)
