"""A private tracefs instance: create, configure, open the per-CPU pipes, read stats, remove.

Instance names are ``proctap-<owner pid>-<owner start ticks>-<n>``: a later run removes instances whose owner
(pid *and* start time, so a reused pid is not mistaken for the owner) is gone.  Every descriptor is opened
O_CLOEXEC (a child inheriting a pipe would keep the instance busy) and closed before the rmdir (EBUSY otherwise).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
import select
from collections.abc import Iterable

from ...errors import BackendUnavailable, DecodeError, ProctapError
from .. import procfs, sigterm
from .format import EventFormat, EventHeaderLayout, PageLayout, parse_format, parse_header_event, parse_header_page

__all__ = [
    "INSTANCE_PREFIX",
    "TRACEFS_MOUNTS",
    "Instance",
    "find_tracefs",
    "instance_owner",
    "list_instances",
    "parse_stats",
    "remove_stale_instances",
    "tracepoint_format",
]

INSTANCE_PREFIX = "proctap"
TRACEFS_MOUNTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
_NAME_RE = re.compile(r"^(?P<prefix>[A-Za-z_]+)-(?P<pid>\d+)-(?P<start>\d+)-(?P<seq>\d+)$")
_counter = itertools.count()


def find_tracefs() -> str | None:
    """The tracefs mount point that has ``instances`` and ``events``, or None."""
    for root in TRACEFS_MOUNTS:
        if os.path.isdir(os.path.join(root, "instances")) and os.path.isdir(os.path.join(root, "events")):
            return root
    return None


def tracepoint_format(system: str, name: str) -> EventFormat | None:
    """The parsed ``events/SYSTEM/NAME/format`` of the top-level tracefs (id and field offsets, e.g. to attach a BPF
    program), or None when tracefs is not mounted or has no such event."""
    root = find_tracefs()
    if root is None:
        return None
    try:
        with open(os.path.join(root, "events", system, name, "format"), encoding="utf-8", errors="replace") as f:
            return parse_format(f.read(), system)
    except (OSError, DecodeError):
        return None


def instance_owner(name: str, prefix: str = INSTANCE_PREFIX) -> tuple[int, int] | None:
    """``(pid, start ticks)`` of the process that made an instance named by :class:`Instance`, else None."""
    m = _NAME_RE.match(name)
    if m is None or m.group("prefix") != prefix:
        return None
    return int(m.group("pid")), int(m.group("start"))


def list_instances(root: str, prefix: str = INSTANCE_PREFIX) -> list[str]:
    try:
        names = os.listdir(os.path.join(root, "instances"))
    except OSError:
        return []
    return sorted(n for n in names if instance_owner(n, prefix) is not None)


def remove_stale_instances(root: str, prefix: str = INSTANCE_PREFIX) -> list[str]:
    """Remove the instances of ``prefix`` whose owner process is gone (a run killed with SIGKILL); their names."""
    removed = []
    for name in list_instances(root, prefix):
        owner = instance_owner(name, prefix)
        if owner is None or procfs.process_alive(*owner):
            continue
        with contextlib.suppress(FileNotFoundError):
            try:
                os.rmdir(os.path.join(root, "instances", name))
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                continue  # still open by a process that inherited it: leave it for a later run
            removed.append(name)
    return removed


def parse_stats(text: str) -> dict[str, int]:
    """``per_cpu/cpuN/stats`` -> {"entries": .., "overrun": .., "commit_overrun": .., "dropped_events": ..}
    (integer lines only; the timestamps are dropped)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        with contextlib.suppress(ValueError):
            out[key.strip().replace(" ", "_")] = int(value)
    return out


class Instance:
    """A tracefs instance this process created; ``remove()`` (idempotent) closes the pipes and deletes it."""

    def __init__(self, root: str, prefix: str = INSTANCE_PREFIX) -> None:
        self.root = root
        pid = os.getpid()
        start = procfs.read_start_ticks(pid) or 0
        self.name = f"{prefix}-{pid}-{start}-{next(_counter)}"
        self.path = os.path.join(root, "instances", self.name)
        self.pipes: dict[int, int] = {}
        self._removed = False
        try:
            os.mkdir(self.path)
        except PermissionError:
            raise BackendUnavailable(f"cannot create a tracefs instance in {root}: run as root") from None
        except OSError as exc:
            raise BackendUnavailable(f"cannot create tracefs instance {self.path}: {exc.strerror}") from None
        sigterm.close_on_sigterm(self, self.remove)

    # -- files ---------------------------------------------------------------------------------------------
    def write(self, relpath: str, value: str) -> None:
        """Write a control file of the instance; ProctapError naming the file and the kernel's complaint."""
        path = os.path.join(self.path, relpath)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        except OSError as exc:
            raise ProctapError(f"cannot open {path}: {exc.strerror}") from None
        try:
            os.write(fd, value.encode())
        except OSError as exc:
            raise ProctapError(f"the kernel refused {value!r} in {path}: {exc.strerror}") from None
        finally:
            os.close(fd)

    def read(self, relpath: str) -> str:
        with open(os.path.join(self.path, relpath), encoding="utf-8", errors="replace") as f:
            return f.read()

    def has_event(self, system: str, name: str) -> bool:
        return os.path.isdir(os.path.join(self.path, "events", system, name))

    def event_format(self, system: str, name: str) -> EventFormat:
        return parse_format(self.read(f"events/{system}/{name}/format"), system)

    def page_layout(self) -> PageLayout:
        return parse_header_page(self.read("events/header_page"))

    def header_layout(self) -> EventHeaderLayout:
        return parse_header_event(self.read("events/header_event"))

    def enable_event(self, system: str, name: str, filter_expr: str | None = None) -> None:
        if filter_expr:
            self.write(f"events/{system}/{name}/filter", filter_expr)
        self.write(f"events/{system}/{name}/enable", "1")

    def set_trace_clock(self, clock: str) -> None:
        available = self.read("trace_clock").replace("[", "").replace("]", "").split()
        if clock not in available:
            raise BackendUnavailable(f"tracefs has no trace clock {clock!r} (this kernel offers {available})")
        self.write("trace_clock", clock)

    def cpus(self) -> list[int]:
        names = os.listdir(os.path.join(self.path, "per_cpu"))
        return sorted(int(n[3:]) for n in names if n.startswith("cpu") and n[3:].isdigit())

    def cpu_stats(self, cpu: int) -> dict[str, int]:
        return parse_stats(self.read(f"per_cpu/cpu{cpu}/stats"))

    # -- pipes ---------------------------------------------------------------------------------------------
    def open_pipes(self, cpus: Iterable[int]) -> dict[int, int]:
        """Open ``per_cpu/cpuN/trace_pipe_raw`` non-blocking for each CPU: {cpu: fd}."""
        for cpu in cpus:
            path = os.path.join(self.path, "per_cpu", f"cpu{cpu}", "trace_pipe_raw")
            self.pipes[cpu] = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        return self.pipes

    def epoll(self) -> select.epoll:
        """An epoll object over every pipe: readable when any CPU has data (with buffer_percent 0)."""
        ep = select.epoll()
        for fd in self.pipes.values():
            ep.register(fd, select.EPOLLIN)
        return ep

    def close_pipes(self) -> None:
        pipes, self.pipes = self.pipes, {}
        for fd in pipes.values():
            with contextlib.suppress(OSError):
                os.close(fd)

    def remove(self) -> None:
        """Stop tracing, close the pipes, delete the instance.  Idempotent."""
        if self._removed:
            return
        self._removed = True
        sigterm.forget(self)
        self.close_pipes()
        with contextlib.suppress(OSError):
            self.write("tracing_on", "0")
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ProctapError(f"cannot remove tracefs instance {self.path}: {exc.strerror}") from None

    @property
    def removed(self) -> bool:
        return self._removed
