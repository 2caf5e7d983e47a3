"""The one enrichment step: what the kernel did not say about an event, read from /proc right after it.

Backends report what the kernel gives them and leave the rest ``None``; the watcher passes the events it delivers
(and those its process table needs) through :func:`enrich_exec`.  Values read here carry ``Origin.PROC``: /proc
describes the task as it is *now*, so a task that already exited (or exec'd again) gives ``None`` or a later state.
"""

from __future__ import annotations

import os
import time
from dataclasses import fields

from .events import Exec, Existing, Origin
from .linux import procfs
from .linux.clock import Clock

__all__ = ["enrich_exec", "read_existing"]


def enrich_exec(event: Exec) -> Exec:
    """``event`` with argv, filename, comm and parent pid filled from /proc where the backend left them ``None``.

    Returns ``event`` itself when there is nothing to fill (or /proc no longer has the task).  One read of
    /proc/PID/stat gives both comm and parent: this runs for every exec in scope, a storm's hot path.
    """
    pid = event.pid
    changes: dict[str, object] = {}
    if event.argv is None:
        argv = procfs.read_argv(pid)
        if argv is not None:
            changes.update(argv=argv, argc=len(argv), argv_from=Origin.PROC)
    if event.filename is None:
        filename = procfs.read_exe(pid)
        if filename is not None:
            changes.update(filename=filename, filename_from=Origin.PROC)
    if event.comm is None or event.parent_pid is None:
        stat = procfs.read_stat(pid)
        if stat is not None:
            if event.comm is None:
                changes.update(comm=stat.comm, comm_from=Origin.PROC)
            if event.parent_pid is None:
                changes["parent_pid"] = stat.ppid
    return _replaced(event, changes) if changes else event


_EXEC_FIELDS = tuple(f.name for f in fields(Exec))
_set = object.__setattr__


def _replaced(event: Exec, changes: dict[str, object]) -> Exec:
    """``dataclasses.replace(event, **changes)`` at half the cost: Exec has no __post_init__ to run, so the frozen
    slots are copied and set directly (the way the dataclass's own __init__ sets them)."""
    new: Exec = object.__new__(Exec)
    for name in _EXEC_FIELDS:
        _set(new, name, changes[name] if name in changes else getattr(event, name))
    return new


def read_existing(pid: int, reason: str, clock: Clock, source: str) -> Existing | None:
    """An :class:`Existing` event for a live process, read from /proc now (``reason``: ``"snapshot"`` or
    ``"repair"``), or ``None`` when /proc no longer has it.  One stat read gives parent, comm and start; the owner of
    /proc/PID gives the uid and gid (the task's effective ids, fs/proc/base.c task_dump_owner)."""
    stat = procfs.read_stat(pid)
    if stat is None:
        return None
    try:
        owner = os.stat(f"/proc/{pid}")
        uid: int | None = owner.st_uid
        gid: int | None = owner.st_gid
    except OSError:
        uid = gid = None
    now = time.monotonic_ns()
    return Existing(
        source=source,
        timestamp_ns=now,
        wall_time=clock.wall_time(now),
        pid=pid,
        tid=pid,
        start_ns=stat.start_ns,
        reason=reason,
        parent_pid=stat.ppid,
        comm=stat.comm,
        filename=procfs.read_exe(pid),
        argv=procfs.read_argv(pid),
        uid=uid,
        gid=gid,
    )
