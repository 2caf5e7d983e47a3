"""The one enrichment step: what the kernel did not say about an event, read from /proc right after it.

Backends report what the kernel gives them and leave the rest ``None``; the watcher passes the events it delivers
(and those its process table needs) through :func:`enrich_exec`.  Values read here carry ``Origin.PROC``: /proc
describes the task as it is *now*, so a task that already exited (or exec'd again) gives ``None`` or a later state.

With context wanted (a :class:`proctap.where.Cgroups` passed in), an Exec or Existing event also gets its
:class:`proctap.events.Where` (cgroup, container, login session, terminal, cwd, namespaces) from /proc
(:func:`read_where`) when the backend did not capture it in the kernel.
"""

from __future__ import annotations

import os
import time
from dataclasses import fields
from typing import Any, TypeVar

from .events import Exec, Existing, Namespaces, Origin, Where
from .linux import procfs
from .linux.cgroups import read_cgroup
from .linux.clock import Clock
from .where import AUDIT_UNSET, Cgroups, decode_tty_nr

__all__ = ["enrich_exec", "read_existing", "read_where"]

NAMESPACE_KINDS = Namespaces._fields  # pid, mnt, net, uts, ipc, user, cgroup: the names under /proc/PID/ns/


def enrich_exec(event: Exec, cgroups: Cgroups | None = None) -> Exec:
    """``event`` with argv, filename, comm and parent pid filled from /proc where the backend left them ``None``,
    and with ``cgroups`` (context wanted) its ``where`` when the backend did not capture it.

    Returns ``event`` itself when there is nothing to fill (or /proc no longer has the task).  One read of
    /proc/PID/stat gives both comm and parent: this runs for every exec in scope, a storm's hot path.
    """
    pid = event.pid
    changes: dict[str, object] = {}
    stat: procfs.Stat | None = None
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
    if cgroups is not None and event.where is None:
        where = read_where(pid, cgroups, stat)
        if where is not None:
            changes["where"] = where
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


def read_where(pid: int, cgroups: Cgroups, stat: procfs.Stat | None = None) -> Where | None:
    """The context of a live process from /proc (``Origin.PROC``), or None when it is gone.  ``stat``: its
    /proc/PID/stat if already read (for the terminal).  Fields /proc does not give (another user's cwd to a
    non-root reader, loginuid without CONFIG_AUDIT) are None."""
    if stat is None:
        stat = procfs.read_stat(pid)
        if stat is None:
            return None
    cgroup_id, path, container = cgroups.by_path(read_cgroup(pid))
    loginuid = procfs.read_id_file(pid, "loginuid")
    sessionid = procfs.read_id_file(pid, "sessionid")
    status = procfs.read_status(pid)
    ns_pid = None
    if status is not None:
        levels = status.get("NSpid", "").split()
        if len(levels) > 1 and levels[-1].isdigit():
            ns_pid = int(levels[-1])
    namespaces = Namespaces(*(procfs.read_namespace(pid, kind) for kind in NAMESPACE_KINDS))
    return _interned(
        Where(
            origin=Origin.PROC,
            cgroup_id=cgroup_id,
            cgroup=path,
            container=container,
            loginuid=None if loginuid == AUDIT_UNSET else loginuid,
            sessionid=None if sessionid == AUDIT_UNSET else sessionid,
            tty=decode_tty_nr(stat.tty_nr),
            cwd=procfs.read_cwd(pid),
            ns_pid=ns_pid,
            namespaces=None if all(ns is None for ns in namespaces) else namespaces,
        )
    )


_INTERNED: dict[Any, Any] = {}
_T = TypeVar("_T")


def _interned(value: _T) -> _T:
    """One object for equal values read from /proc (contexts, names, command lines: a build's thousand execs in one
    directory, a server's thousands of workers): less memory in the process cache, and one encoding of a context
    in ``--context`` output."""
    if value is None:
        return value
    found = _INTERNED.get(value)
    if found is None:
        if len(_INTERNED) >= 16384:
            _INTERNED.clear()
        found = _INTERNED[value] = value
    return found  # type: ignore[no-any-return]


def read_existing(
    pid: int, reason: str, clock: Clock, source: str, cgroups: Cgroups | None = None
) -> Existing | None:
    """An :class:`Existing` event for a live process, read from /proc now (``reason``: ``"snapshot"`` or
    ``"repair"``), or ``None`` when /proc no longer has it.  One stat read gives parent, comm and start; the owner of
    /proc/PID gives the uid and gid (the task's effective ids, fs/proc/base.c task_dump_owner).  With ``cgroups``
    (context wanted) its ``where`` too.  Equal names and command lines are one object (:func:`_interned`): a scan
    of 30,000 workers of one program holds one argv, not 30,000."""
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
        comm=_interned(stat.comm),
        filename=_interned(procfs.read_exe(pid)),
        argv=_interned(procfs.read_argv(pid)),
        uid=uid,
        gid=gid,
        where=None if cgroups is None else read_where(pid, cgroups, stat),
    )
