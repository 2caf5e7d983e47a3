"""What /proc says is running now: the start-up snapshot (``watch --snapshot``, ``proctap ps``) and the comparison a
repair makes after lost events.

Both read /proc with :func:`proctap.enrich.read_existing`, the one reader of a whole process.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .enrich import read_existing
from .events import Existing
from .linux import procfs
from .linux.clock import Clock
from .where import Cgroups

__all__ = ["parents_first", "scan", "start_times", "unseen_or_gone"]


def scan(
    reason: str, clock: Clock, source: str, pids: Iterable[int] | None = None, cgroups: Cgroups | None = None
) -> list[Existing]:
    """An :class:`Existing` event for every live process (or for ``pids``), parents before children; with
    ``cgroups`` (context wanted) each carries its :class:`proctap.Where`."""
    found = [
        ev
        for pid in (procfs.list_pids() if pids is None else pids)
        if (ev := read_existing(pid, reason, clock, source, cgroups))
    ]
    return parents_first(found)


def parents_first(events: list[Existing]) -> list[Existing]:
    """The events ordered so that each process comes after its parent (when its parent is among them); siblings
    by pid.  Processes whose parent is not among them (pid 1, kthreadd, orphans of a subtree) start the order."""
    by_pid = {ev.pid: ev for ev in events}
    children: dict[int, list[Existing]] = {}
    roots = []
    for ev in sorted(events, key=lambda e: e.pid):
        parent = ev.parent_pid
        if parent is not None and parent in by_pid and parent != ev.pid:
            children.setdefault(parent, []).append(ev)
        else:
            roots.append(ev)
    out: list[Existing] = []
    seen: set[int] = set()
    stack = list(reversed(roots))
    while stack:
        ev = stack.pop()
        if ev.pid in seen:
            continue
        seen.add(ev.pid)
        out.append(ev)
        stack.extend(reversed(children.get(ev.pid, ())))
    out.extend(ev for ev in events if ev.pid not in seen)  # a parent cycle (impossible in /proc): keep them anyway
    return out


def start_times() -> tuple[dict[int, int], dict[int, int]]:
    """(running, dead): pid -> start (ns since boot, tick precision) of every live process, and pid -> wait status
    of every process that has exited but is not reaped yet (a zombie: its Exit happened, /proc still lists it; stat's
    exit_code field holds the status, 0 for a reader that may not ptrace it).  One stat read each."""
    running: dict[int, int] = {}
    dead: dict[int, int] = {}
    for pid in procfs.list_pids():
        stat = procfs.read_stat(pid)
        if stat is None:
            continue
        if stat.is_dead:
            dead[pid] = stat.exit_code
        else:
            running[pid] = stat.start_ns
    return running, dead


def unseen_or_gone(
    known: Mapping[int, int | None], running: Mapping[int, int], tolerance_ns: int
) -> tuple[list[int], list[int]]:
    """Compare the cache's live processes (``known``: pid -> start) with /proc's (``running``).

    Returns (gone, unseen): pids the cache holds that /proc no longer has (or has as a different process: the pid
    was reused), and pids /proc has that the cache does not hold (or holds as an older process).
    """
    gone = []
    unseen = []
    for pid, start in known.items():
        now = running.get(pid)
        if now is None or (start is not None and abs(now - start) > tolerance_ns):
            gone.append(pid)
    for pid, start in running.items():
        had = known.get(pid, -1)
        if had == -1 or (had is not None and abs(start - had) > tolerance_ns):
            unseen.append(pid)
    return gone, unseen
