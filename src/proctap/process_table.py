"""The live process table: what is known about each running process, kept up to date from the event stream.

It only consumes events.  Processes that existed before the watcher started are learnt from /proc on first sight.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .enrich import read_process
from .events import Comm, Event, Exec, Exit, Fork

__all__ = ["ProcessInfo", "ProcessTable"]


@dataclass(slots=True)
class ProcessInfo:
    """What the table knows of one process; ``None`` fields are unknown."""

    pid: int
    parent_pid: int | None = None
    start_ns: int | None = None
    comm: str | None = None
    argv: tuple[str, ...] | None = None
    filename: str | None = None
    forked_ns: int | None = None  # CLOCK_MONOTONIC of its Fork event, when seen

    def snapshot(self) -> ProcessInfo:
        """A copy that later events will not change."""
        return ProcessInfo(
            self.pid, self.parent_pid, self.start_ns, self.comm, self.argv, self.filename, self.forked_ns
        )


class ProcessTable:
    """pid -> :class:`ProcessInfo` for live processes.  Feed every event to :meth:`update`.

    An Exit of a process removes it *after* the update, so a consumer that reads the table for the Exit event itself
    calls :meth:`lookup` before :meth:`update` or uses :meth:`forget` explicitly; :meth:`update` returns the info the
    event applied to, which stays valid for that event.
    """

    def __init__(self, read_proc: bool = True) -> None:
        self._procs: dict[int, ProcessInfo] = {}
        self._read_proc = read_proc

    def __len__(self) -> int:
        return len(self._procs)

    def __contains__(self, pid: object) -> bool:
        return pid in self._procs

    def lookup(self, pid: int) -> ProcessInfo | None:
        """The info for a live pid, learnt from /proc on first sight if allowed; None if unknown."""
        info = self._procs.get(pid)
        if info is None and self._read_proc and pid > 0:
            facts = read_process(pid)
            if facts is None:
                return None
            info = ProcessInfo(pid, parent_pid=facts.parent_pid, comm=facts.comm, argv=facts.argv)
            self._procs[pid] = info
        return info

    def learn(self, pids: Iterable[int]) -> None:
        """Read these live processes into the table now, so that the exit of one that started before the watcher
        still shows its parent and command line (at its exit, /proc no longer has them)."""
        for pid in pids:
            self.lookup(pid)

    def update(self, event: Event) -> ProcessInfo | None:
        """Apply an event; returns the process it concerns (None for Lost and unknown pids)."""
        if isinstance(event, Fork):
            if event.is_thread:
                return self._procs.get(event.pid) or self.lookup(event.pid)
            parent = self.lookup(event.parent_pid)  # learnt from /proc if it predates the watcher
            info = ProcessInfo(
                event.pid,
                parent_pid=event.parent_pid,
                start_ns=event.start_ns,
                comm=event.comm or (parent.comm if parent else None),
                argv=parent.argv if parent else None,
                filename=parent.filename if parent else None,
                forked_ns=event.timestamp_ns,
            )
            self._procs[event.pid] = info
            return info
        if event.pid <= 0:
            return None
        found = self._procs.get(event.pid) or self.lookup(event.pid)
        if found is None:
            found = ProcessInfo(event.pid, start_ns=event.start_ns)
            self._procs[event.pid] = found
        info = found
        if isinstance(event, Exec):
            info.argv = event.argv
            info.filename = event.filename
            # exec always renames the task to the file's basename (fs/exec.c, __set_task_comm(kbasename(filename)))
            # so the pre-exec comm is stale: use the event's, else derive it, else unknown.
            if event.comm is not None:
                info.comm = event.comm
            else:
                info.comm = None if event.filename is None else event.filename.rsplit("/", 1)[-1][:15]
            if event.parent_pid is not None:
                info.parent_pid = event.parent_pid
        elif isinstance(event, Comm):
            if event.tid == event.pid:
                info.comm = event.comm
        elif isinstance(event, Exit) and not event.is_thread:
            self._procs.pop(event.pid, None)
        return info
