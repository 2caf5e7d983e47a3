"""Renderers: turn events into text for a stream.  Pure formatting; the only I/O is one write per batch.

* :class:`TableRenderer`: an aligned, human-readable table (one line per event), enriched from the process table
  (parent pid and command line for events that do not carry them).
* :class:`JsonRenderer`: NDJSON, one :meth:`Event.to_dict` object per line.

Every text format (durations, statuses, command lines, quoting) comes from :mod:`proctap.text`, the JSON form from
:func:`proctap.events.event_dict` (written by :func:`proctap.events.event_json`, its bytes without the dict).

Both take a text stream and offer ``format(event, info) -> str`` (one line, no newline), ``render(event, info)``
(write one line), ``render_batch(pairs)`` (write many lines with a single write call, then flush) and
``render_events(events)`` (the same, each event with its own process, ``event.process``: what a watcher delivers).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Protocol, TextIO

from .cache import Process, ProcessCache
from .events import Event, Exec, ExecFailed, Existing, Exit, Fork, Lost, event_json
from .text import (
    format_accounting,
    format_change,
    format_command,
    format_duration,
    format_exit,
    format_lost,
    quote_arg,
    sanitize,
)

__all__ = ["JsonRenderer", "Renderer", "TableRenderer", "where_text"]

EventInfo = tuple[Event, "Process | None"]


class Renderer(Protocol):
    """What the command line needs from a renderer."""

    def header(self) -> None: ...

    def format(self, event: Event, info: Process | None = None) -> str: ...

    def render(self, event: Event, info: Process | None = None) -> None: ...

    def render_batch(self, pairs: Iterable[EventInfo]) -> None: ...

    def render_events(self, events: list[Event]) -> None: ...


# -- the table -------------------------------------------------------------------------------------------------

_KIND_LABEL = {
    "fork": "fork",
    "fork_failed": "forkfail",
    "exec": "exec",
    "exec_failed": "execfail",
    "existing": "existing",
    "exit": "exit",
    "comm": "comm",
    "uid": "uid",
    "gid": "gid",
    "sid": "sid",
    "ptrace": "ptrace",
    "coredump": "core",
    "lost": "LOST",
}

_INFO_WIDTH = 16  # longer INFO (a long exec filename) pushes that one line's COMMAND right rather than all lines


class TableRenderer:
    """The human table: ``TIME EVENT PID PPID LIFETIME INFO COMMAND``, one event per line.

    Thread creation shows as ``clone`` (as forkstat does), with the new thread's id in INFO.  ``info`` (the
    :class:`Process` as of the event) supplies the parent pid and command line where the event lacks them.
    ``width``: truncate lines to this many characters (a terminal's width); None: never truncate.
    ``color``: highlight lost events (ANSI) for a terminal.  ``context`` (the watcher's process cache): end each
    line with who and where the process is (:func:`where_text`: ``[ctr=podman:web auid=1000 ses=3 tty=pts/0
    cwd=/srv]``) and its parent (``<- bash[1234]``), or with ``ancestry`` the whole chain of ancestors.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        width: int | None = None,
        color: bool = False,
        context: ProcessCache | None = None,
        ancestry: bool = False,
    ) -> None:
        self.stream = stream
        self.width = width
        self.color = color
        self.context = context
        self.ancestry = ancestry
        self._second = -1
        self._second_text = ""
        self._commands: dict[tuple[str, ...], str] = {}
        self._wheres: dict[tuple[int, str | None], tuple[object, str]] = {}

    def header(self) -> None:
        line = self._columns("TIME", "EVENT", "PID", "PPID", "LIFETIME", "INFO", "COMMAND", time_width=12)
        self.stream.write(self._clip(line) + "\n")
        self.stream.flush()

    def render(self, event: Event, info: Process | None = None) -> None:
        self.stream.write(self.format(event, info) + "\n")
        self.stream.flush()

    def render_batch(self, pairs: Iterable[EventInfo]) -> None:
        fmt = self.format
        lines = [fmt(ev, info) for ev, info in pairs]
        if lines:
            lines.append("")
            self.stream.write("\n".join(lines))
            self.stream.flush()

    def render_events(self, events: list[Event]) -> None:
        """Each event with its process (``event.process``, as the watcher set it), one write."""
        self.render_batch([(ev, ev.process) for ev in events])

    # -- formatting --------------------------------------------------------------------------------------------
    def format(self, event: Event, info: Process | None = None) -> str:
        stamp = self._time(event.wall_time)
        cls = type(event)
        ppid: int | None = None
        lifetime = ""
        argv: tuple[str, ...] | None = None
        truncated = False
        if cls is Fork:
            fork: Fork = event  # type: ignore[assignment]
            if fork.is_thread:
                label = "clone"
                text = f"thread {fork.tid}"
            else:
                label = "fork"
                ppid = fork.parent_pid
                text = "" if fork.parent_tid is None or fork.parent_tid == ppid else f"by thread {fork.parent_tid}"
        elif cls is Exec:
            execd: Exec = event  # type: ignore[assignment]
            label = "exec"
            ppid = execd.parent_pid
            argv = execd.argv
            truncated = execd.argv_truncated
            text = "" if execd.filename is None else sanitize(execd.filename)
        elif cls is Exit:
            ended: Exit = event  # type: ignore[assignment]
            label = "exit"
            ppid = ended.parent_pid
            status = format_exit(ended)
            text = f"thread {ended.tid} {status}" if ended.is_thread else status
            if ended.accounting is not None:
                text += "  " + format_accounting(ended.accounting)
            lifetime = format_duration(self._lifetime(ended, info))
        elif cls is ExecFailed:
            failed: ExecFailed = event  # type: ignore[assignment]
            label = "execfail"
            argv = failed.argv
            truncated = failed.argv_truncated
            name = failed.errno_name or "?"
            text = name if failed.filename is None else f"{name} {sanitize(failed.filename)}"
        elif cls is Existing:
            found: Existing = event  # type: ignore[assignment]
            label = "existing"
            ppid = found.parent_pid
            argv = found.argv
            text = "" if found.filename is None else sanitize(found.filename)
        elif cls is Lost:
            line = f"{stamp} {format_lost(event)}"  # type: ignore[arg-type]
            return f"\x1b[1;31m{line}\x1b[0m" if self.color else line
        else:
            label = _KIND_LABEL.get(event.kind.value, event.kind.value)
            ppid = getattr(event, "parent_pid", None)
            text = format_change(event)
        comm: str | None = getattr(event, "comm", None)
        if info is not None:
            if ppid is None:
                ppid = info.parent_pid
            if argv is None:
                argv = info.argv
                comm = comm or info.comm
        command = self._command(argv, comm, truncated)
        line = f"{stamp} {label:<8} {event.pid:>7} {'' if ppid is None else ppid:>7} {lifetime:>8} "
        line = f"{line}{text:<{_INFO_WIDTH}} {command}"
        if self.context is not None and info is not None:
            line += self._where(info) + self._lineage(info)
        return self._clip(line) if self.width else line

    def _where(self, proc: Process) -> str:
        where = proc.where
        key = (id(where), proc.cwd)
        found = self._wheres.get(key)
        if found is None:
            if len(self._wheres) >= 4096:
                self._wheres.clear()
            text = where_text(proc)
            found = self._wheres[key] = (where, f"  [{text}]" if text else "")  # keeps the record (its id) alive
        return found[1]

    def _lineage(self, proc: Process) -> str:
        cache = self.context
        assert cache is not None
        chain = cache.ancestors(proc) if self.ancestry else [p for p in (cache.parent(proc),) if p is not None]
        return "".join(f" <- {sanitize(p.comm or '?')}[{p.pid}]" for p in chain)

    def _command(self, argv: tuple[str, ...] | None, comm: str | None, truncated: bool) -> str:
        if not argv or truncated:
            return format_command(argv, comm, truncated) or "?"
        # A process's argv tuple is shared by its fork, exec and exit events and by its children: format it once.
        cache = self._commands
        text = cache.get(argv)
        if text is None:
            if len(cache) >= 4096:
                cache.clear()
            text = cache[argv] = format_command(argv, comm) or "?"
        return text

    def _columns(
        self, stamp: str, label: str, pid: str, ppid: str, lifetime: str, text: str, command: str, time_width: int = 0
    ) -> str:
        line = f"{stamp:<{time_width}} {label:<8} {pid:>7} {ppid:>7} {lifetime:>8} {text:<{_INFO_WIDTH}} {command}"
        return line.rstrip()

    def _clip(self, line: str) -> str:
        width = self.width
        if width and len(line) > width:
            return line[: max(width - 1, 0)] + "…"
        return line

    def _time(self, wall: float) -> str:
        second = int(wall)
        if second != self._second:  # localtime() once per second, not once per event
            self._second = second
            self._second_text = time.strftime("%H:%M:%S", time.localtime(second))
        return f"{self._second_text}.{int((wall - second) * 1000):03d}"

    @staticmethod
    def _lifetime(event: Exit, info: Process | None) -> int | None:
        if event.lifetime_ns is not None:
            return event.lifetime_ns
        if info is not None and info.forked_ns is not None and not event.is_thread:
            return event.timestamp_ns - info.forked_ns
        return None


def where_text(proc: Process) -> str:
    """Who and where a process is, compact, for a table line: ``ctr=RUNTIME:NAME`` (the container's name, else
    its short id) or ``cg=PATH`` outside a container (not for the root cgroup), ``auid=N ses=N`` when it has a login
    session, ``tty=pts/N``, ``cwd=PATH``; what is unknown or unset is left out."""
    where = proc.where
    parts: list[str] = []
    if where is not None:
        container = where.container
        if container is not None:
            parts.append(f"ctr={container.runtime}:{sanitize(container.name or container.id[:12])}")
        elif where.cgroup is not None and where.cgroup != "/":
            parts.append(f"cg={quote_arg(where.cgroup)}")
        if where.loginuid is not None:
            parts.append(f"auid={where.loginuid}")
        if where.sessionid is not None:
            parts.append(f"ses={where.sessionid}")
        if where.tty is not None:
            parts.append(f"tty={where.tty}")
    if proc.cwd is not None:
        parts.append(f"cwd={quote_arg(proc.cwd)}")
    return " ".join(parts)


# -- NDJSON ----------------------------------------------------------------------------------------------------


class JsonRenderer:
    """NDJSON: one ``Event.to_dict()`` object per line (:func:`proctap.events.event_dict`), compact, ASCII-only.
    Text that was not valid UTF-8 reads U+FFFD, its exact bytes in ``raw_b64`` (read them back with
    :func:`proctap.events.exact_bytes`).  ``context`` (the watcher's process cache): each object gains ``exec_id``
    and ``parent`` ({pid, comm, exe}), with ``ancestry`` ``ancestors`` (parent first, up to the root), then who and
    where the process is (:func:`proctap.cache.where_dict`: cgroup, container, loginuid, tty, cwd, ...), from
    ``info``, the event's process."""

    def __init__(self, stream: TextIO, *, context: ProcessCache | None = None, ancestry: bool = False) -> None:
        self.stream = stream
        self.context = context
        self.ancestry = ancestry

    def header(self) -> None:
        """NDJSON has no header."""

    def format(self, event: Event, info: Process | None = None) -> str:
        return self._lines(((event, info),))[0]

    def render(self, event: Event, info: Process | None = None) -> None:
        self.stream.write(self.format(event, info) + "\n")
        self.stream.flush()

    def render_batch(self, pairs: Iterable[EventInfo]) -> None:
        lines = self._lines(pairs)
        if lines:
            lines.append("")
            self.stream.write("\n".join(lines))
            self.stream.flush()

    def _lines(self, pairs: Iterable[EventInfo]) -> list[str]:
        """Each event's line, its process's context spliced in when wanted: one loop for a storm's batch."""
        if self.context is None:
            return [event_json(ev) for ev, _ in pairs]
        context_json, ancestry = self.context.context_json, self.ancestry
        return [
            line if type(ev) is Lost else f"{line[:-1]},{context_json(info, ancestry=ancestry)}}}"
            for ev, info in pairs
            for line in (event_json(ev),)
        ]

    def render_events(self, events: list[Event]) -> None:
        """Each event with its process (``event.process``, as the watcher set it), one write."""
        if self.context is not None:
            self.render_batch([(ev, ev.process) for ev in events])
        elif events:
            self.stream.write("\n".join(map(event_json, events)) + "\n")
            self.stream.flush()
