"""``proctap ps``: the processes running now, as a tree (or NDJSON), from one read of /proc.

It shows what ``proctap watch --snapshot`` delivers first: the same ``existing`` events, the same filters and the same
``--context``/``--ancestry`` fields.  No backend and no privilege is needed (other users' executables and arguments
are hidden from non-root readers by /proc itself).
"""

from __future__ import annotations

import argparse
import pwd
import shutil
import sys
import time

from ..cache import ProcessCache
from ..errors import ProctapError
from ..events import Existing
from ..linux import procfs
from ..linux.cgroups import relative_cgroup
from ..linux.clock import Clock
from ..render import JsonRenderer
from ..snapshot import scan
from ..text import format_command, sanitize
from ..watcher import EventFilter
from ..where import Cgroups
from .common import Subcommand, comm_arg, pid_arg
from .watch import add_context_filter_arguments, context_filters

__all__ = ["SUBCOMMAND", "ps_lines"]

_HEADER = f"{'PID':>7} {'PPID':>7} {'USER':<10} {'STARTED':<8} COMMAND"


def _add_ps_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-p", "--pid", type=pid_arg, help="only this process and its descendants")
    parser.add_argument(
        "-c", "--comm", type=comm_arg, metavar="NAME", help="only processes whose name (comm or argv[0]) is NAME"
    )
    parser.add_argument("-j", "--json", action="store_true", help="NDJSON: one 'existing' event per process")
    parser.add_argument("--flat", action="store_true", help="a list by pid instead of a tree")
    parser.add_argument("-w", "--wide", action="store_true", help="do not truncate lines to the terminal width")
    add_context_filter_arguments(parser)
    parser.add_argument(
        "--context",
        action="store_true",
        help="JSON: add each process's parent, exec_id, cgroup, container, login, terminal, cwd and namespaces",
    )
    parser.add_argument("--ancestry", action="store_true", help="JSON: add the chain of ancestors (implies --context)")


def _in_context(events: list[Existing], args: argparse.Namespace, cgroups: Cgroups) -> list[Existing]:
    """The processes the --container/--cgroup/--uid/--loginuid filters keep (as ``watch`` applies them)."""
    filters = context_filters(args)
    if filters["cgroup"] is not None:
        found = relative_cgroup(str(filters["cgroup"]), cgroups.root)
        if found is None:
            raise ProctapError(f"no cgroup {filters['cgroup']!r} here: give a path as /proc/PID/cgroup shows it")
        filters["cgroup"] = found
    flt = EventFilter(frozenset(), **filters)  # type: ignore[arg-type]
    cache = ProcessCache(read_proc=False)
    return [ev for ev in events if flt.context_matches(ev, cache.apply(ev))]


def _selected(events: list[Existing], args: argparse.Namespace) -> list[Existing]:
    if args.pid is not None:
        keep = {args.pid} | procfs.descendants(args.pid)
        events = [ev for ev in events if ev.pid in keep]
        if not events:
            raise ProctapError(f"no process with pid {args.pid}: give the pid of a running process")
    if args.comm is not None:
        events = [ev for ev in events if _named(ev, args.comm)]
    return events


def _named(ev: Existing, name: str) -> bool:
    return ev.comm == name or bool(ev.argv and ev.argv[0].rsplit("/", 1)[-1] == name)


def _user(uid: int | None, names: dict[int, str]) -> str:
    if uid is None:
        return "?"
    if uid not in names:
        try:
            names[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            names[uid] = str(uid)
    return names[uid]


def ps_lines(events: list[Existing], *, tree: bool = True, now: float | None = None) -> list[str]:
    """The table: one line per process (``events`` parents first, as :func:`proctap.snapshot.scan` orders them),
    the command indented under its parent in a tree."""
    clock = Clock()
    today = time.localtime(now).tm_yday if now is not None else time.localtime().tm_yday
    depth: dict[int, int] = {}
    names: dict[int, str] = {}
    lines = [_HEADER]
    for ev in events if tree else sorted(events, key=lambda e: e.pid):
        level = depth[ev.parent_pid] + 1 if tree and ev.parent_pid in depth else 0
        depth[ev.pid] = level
        started = "?"
        if ev.start_ns is not None:
            local = time.localtime(clock.wall_time(clock.monotonic(ev.start_ns)))
            started = time.strftime("%H:%M:%S" if local.tm_yday == today else "%b%d", local)
        command = format_command(ev.argv, ev.comm) or "?"
        indent = "  " * (level - 1) + "\\_ " if level else ""
        ppid = "" if ev.parent_pid is None else ev.parent_pid
        lines.append(f"{ev.pid:>7} {ppid:>7} {sanitize(_user(ev.uid, names)):<10} {started:<8} {indent}{command}")
    return lines


def run_ps(args: argparse.Namespace) -> int:
    by_context = any(value is not None for value in context_filters(args).values())
    cgroups = Cgroups() if args.context or args.ancestry or by_context else None
    everything = scan("snapshot", Clock(), "proc", cgroups=cgroups)
    events = _selected(everything, args)
    if by_context and cgroups is not None:
        events = _in_context(events, args, cgroups)
    out = sys.stdout
    if args.json:
        cache = ProcessCache() if args.context or args.ancestry else None
        records = {}
        if cache is not None:  # every process, so the ancestors of a selected one are known
            records = {ev.pid: cache.apply(ev) for ev in everything}
        renderer = JsonRenderer(out, context=cache, ancestry=args.ancestry)
        renderer.render_batch([(ev, records.get(ev.pid)) for ev in events])
        return 0
    width = None if args.wide or not out.isatty() else shutil.get_terminal_size().columns
    lines = ps_lines(events, tree=not args.flat)
    if width:
        lines = [line if len(line) <= width else line[: width - 1] + "…" for line in lines]
    out.write("\n".join(lines) + "\n")
    return 0


SUBCOMMAND = Subcommand(
    "ps",
    "the processes running now, as a tree (or NDJSON with --json)",
    _add_ps_arguments,
    run_ps,
    description="Show the processes running now, read from /proc: a tree by default. The same 'existing' events "
    "that 'proctap watch --snapshot' starts with.",
)
