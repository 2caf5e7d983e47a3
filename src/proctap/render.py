"""Renderers: turn events into text for a stream.  Pure formatting; the only I/O is one write per batch.

* :class:`TableRenderer`: an aligned, human-readable table (one line per event), enriched from the process table
  (parent pid and command line for events that do not carry them).
* :class:`JsonRenderer`: NDJSON, one :meth:`Event.to_dict` object per line.

Both take a text stream and offer ``format(event, info) -> str`` (one line, no newline), ``render(event, info)``
(write one line) and ``render_batch(pairs)`` (write many lines with a single write call, then flush).
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, fields
from enum import Enum
from typing import Any, Protocol, TextIO

from .events import (
    EVENT_CLASSES,
    Accounting,
    Comm,
    Coredump,
    Event,
    Exec,
    Exit,
    Fork,
    ForkFailed,
    Gid,
    Lost,
    Ptrace,
    Sid,
    Uid,
    errno_name,
    signal_name,
)
from .linux.taskstats import format_accounting
from .process_table import ProcessInfo

__all__ = [
    "JsonRenderer",
    "Renderer",
    "TableRenderer",
    "event_dict",
    "format_command",
    "format_duration",
    "format_exit",
    "format_lost",
    "sanitize",
]

EventInfo = tuple[Event, "ProcessInfo | None"]


class Renderer(Protocol):
    """What the command line needs from a renderer."""

    def header(self) -> None: ...

    def format(self, event: Event, info: ProcessInfo | None = None) -> str: ...

    def render(self, event: Event, info: ProcessInfo | None = None) -> None: ...

    def render_batch(self, pairs: Iterable[EventInfo]) -> None: ...


# -- pure helpers ----------------------------------------------------------------------------------------------


def format_duration(ns: int | None) -> str:
    """A short human duration: ``850us``, ``1.2ms``, ``3.40s``, ``2m03s``, ``1h02m``, ``3d04h``; ``""`` for None."""
    if ns is None:
        return ""
    if ns < 0:
        return "-" + format_duration(-ns)
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 999_500:
        return f"{ns / 1e3:.0f}us"
    if ns < 999_950_000:
        return f"{ns / 1e6:.1f}ms"
    if ns < 59_995_000_000:
        return f"{ns / 1e9:.2f}s"
    secs = (ns + 500_000_000) // 1_000_000_000
    if secs < 3600:
        return f"{secs // 60}m{secs % 60:02d}s"
    if secs < 86400:
        return f"{secs // 3600}h{secs % 3600 // 60:02d}m"
    return f"{secs // 86400}d{secs % 86400 // 3600:02d}h"


def format_exit(event: Exit) -> str:
    """``exit 3``, ``SIGKILL``, ``SIGSEGV (core)``, or ``?`` when the backend cannot know the status."""
    if event.signal is not None:
        name = signal_name(event.signal) or "?"
        return f"{name} (core)" if event.core_dumped else name
    if event.exit_code is not None:
        return f"exit {event.exit_code}"
    return "?"


def format_lost(event: Lost) -> str:
    """``LOST 123 events (netlink socket overrun, cpu 1)``; unknown counts read ``LOST events (count unknown, ...)``."""
    details = [event.reason] if event.reason else []
    if event.cpu is not None:
        details.append(f"cpu {event.cpu}")
    if event.count is None:
        return "LOST events (" + ", ".join(["count unknown", *details]) + ")"
    return f"LOST {event.count} events" + (" (" + ", ".join(details) + ")" if details else "")


def sanitize(text: str) -> str:
    """Make text safe for one terminal line: control characters and undecodable bytes become escapes.

    Non-UTF-8 bytes (kept by proctap as surrogate escapes) are shown as ``\\xNN``, a newline as ``\\n``.
    """
    if text.isprintable():
        return text
    raw = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in raw)


def _quote(arg: str) -> str:
    if arg.isprintable():
        return shlex.quote(arg)
    return "$'" + sanitize(arg).replace("'", "\\'") + "'"


def format_command(argv: Sequence[str] | None, comm: str | None = None, truncated: bool = False) -> str:
    """A command line as a shell would read it (arguments quoted where needed, control bytes escaped).

    Without argv, the comm in brackets as ps(1) does (``[kworker/0:1]``); ``""`` when nothing is known.
    """
    if argv:
        text = " ".join(map(_quote, argv))
        return text + " ..." if truncated else text
    if comm:
        return f"[{sanitize(comm)}]"
    return ""


# -- the table -------------------------------------------------------------------------------------------------

_KIND_LABEL = {
    "fork": "fork",
    "fork_failed": "forkfail",
    "exec": "exec",
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
    :class:`ProcessInfo` as of the event) supplies the parent pid and command line where the event lacks them.
    ``width``: truncate lines to this many characters (a terminal's width); None: never truncate.
    ``color``: highlight lost events (ANSI) for a terminal.
    """

    def __init__(self, stream: TextIO, *, width: int | None = None, color: bool = False) -> None:
        self.stream = stream
        self.width = width
        self.color = color
        self._second = -1
        self._second_text = ""
        self._commands: dict[tuple[str, ...], str] = {}

    def header(self) -> None:
        line = self._columns("TIME", "EVENT", "PID", "PPID", "LIFETIME", "INFO", "COMMAND", time_width=12)
        self.stream.write(self._clip(line) + "\n")
        self.stream.flush()

    def render(self, event: Event, info: ProcessInfo | None = None) -> None:
        self.stream.write(self.format(event, info) + "\n")
        self.stream.flush()

    def render_batch(self, pairs: Iterable[EventInfo]) -> None:
        fmt = self.format
        lines = [fmt(ev, info) for ev, info in pairs]
        if lines:
            lines.append("")
            self.stream.write("\n".join(lines))
            self.stream.flush()

    # -- formatting --------------------------------------------------------------------------------------------
    def format(self, event: Event, info: ProcessInfo | None = None) -> str:
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
        elif cls is Lost:
            line = f"{stamp} {format_lost(event)}"  # type: ignore[arg-type]
            return f"\x1b[1;31m{line}\x1b[0m" if self.color else line
        else:
            label = _KIND_LABEL.get(event.kind.value, event.kind.value)
            ppid = getattr(event, "parent_pid", None)
            text = _other_info(event)
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
        return self._clip(line) if self.width else line

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
    def _lifetime(event: Exit, info: ProcessInfo | None) -> int | None:
        if event.lifetime_ns is not None:
            return event.lifetime_ns
        if info is not None and info.forked_ns is not None and not event.is_thread:
            return event.timestamp_ns - info.forked_ns
        return None


def _other_info(event: Event) -> str:
    if isinstance(event, ForkFailed):
        name = errno_name(event.errno) or "?"
        return f"{name} ({event.syscall})" if event.syscall else name
    if isinstance(event, Comm):
        return f"comm {sanitize(event.comm)}"
    if isinstance(event, Uid):
        return f"uid {event.ruid} euid {event.euid}"
    if isinstance(event, Gid):
        return f"gid {event.rgid} egid {event.egid}"
    if isinstance(event, Sid):
        return "new session"
    if isinstance(event, Ptrace):
        return f"traced by {event.tracer_pid}" if event.attached else "trace detached"
    if isinstance(event, Coredump):
        return "dumping core"
    return ""


# -- NDJSON ----------------------------------------------------------------------------------------------------


_PLAIN = (int, str, bool, float, type(None))


def _field_names(cls: type[Event]) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


_FIELDS: dict[type[Event], tuple[str, ...]] = {cls: _field_names(cls) for cls in EVENT_CLASSES.values()}


def event_dict(event: Event) -> dict[str, Any]:
    """Exactly ``event.to_dict()``, built without the per-event dataclass introspection that makes ``to_dict``
    several times slower (the NDJSON hot path in a fork storm); other classes fall back to ``to_dict``."""
    cls = type(event)
    names = _FIELDS.get(cls)
    if names is None:
        return event.to_dict()
    out: dict[str, Any] = {"event": cls.kind.value}
    for name in names:
        value = getattr(event, name)
        if type(value) not in _PLAIN:
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Enum):
                value = value.value
            elif isinstance(value, Accounting):
                value = asdict(value)
            else:
                return event.to_dict()
        out[name] = value
    start = event.start_ns
    out["key"] = None if start is None else f"{event.pid}@{start}"
    if cls is Exit:
        out["signal_name"] = signal_name(event.signal)  # type: ignore[attr-defined]
    elif cls is ForkFailed:
        out["errno_name"] = errno_name(event.errno)  # type: ignore[attr-defined]
    return out


class JsonRenderer:
    """NDJSON: one ``Event.to_dict()`` object per line, compact, ASCII-only (non-UTF-8 bytes of argv/filenames
    appear as lone surrogates ``\\udc80``-``\\udcff``: Python's ``os.fsencode`` restores the bytes).  ``info`` is
    ignored: the JSON carries exactly what the event carries."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._encode = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode

    def header(self) -> None:
        """NDJSON has no header."""

    def format(self, event: Event, info: ProcessInfo | None = None) -> str:
        return self._encode(event_dict(event))

    def render(self, event: Event, info: ProcessInfo | None = None) -> None:
        self.stream.write(self.format(event) + "\n")
        self.stream.flush()

    def render_batch(self, pairs: Iterable[EventInfo]) -> None:
        encode = self._encode
        lines = [encode(event_dict(ev)) for ev, _ in pairs]
        if lines:
            lines.append("")
            self.stream.write("\n".join(lines))
            self.stream.flush()
