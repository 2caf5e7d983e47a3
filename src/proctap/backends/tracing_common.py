"""What the tracefs and kprobe backends share: both read tracepoint records of task ids and must map them to
processes, follow clone flags and keep per-task exit bookkeeping."""

from __future__ import annotations

import os

from ..linux.procfs import read_tgid

__all__ = ["CLONE_PARENT", "CLONE_THREAD", "TaskGroups"]

CLONE_THREAD = 0x10000  # include/uapi/linux/sched.h
CLONE_PARENT = 0x8000


class TaskGroups:
    """tid -> tgid, learnt from task_newtask and execs, /proc as fallback (tasks that predate the watcher)."""

    __slots__ = ("_tgid",)

    def __init__(self) -> None:
        self._tgid: dict[int, int] = {}

    def tgid(self, tid: int) -> int:
        tgid = self._tgid.get(tid)
        if tgid is None:
            tgid = read_tgid(tid) or tid
            self._tgid[tid] = tgid
        return tgid

    def prime(self) -> None:
        """Learn every existing thread from /proc/PID/task (call after tracing is on: later ones are traced).
        Without it a thread that predates the watcher and is reaped before its exit record is drained could not
        be placed in its process."""
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                self._tgid.setdefault(int(tid), pid)

    def items(self) -> list[tuple[int, int]]:
        return list(self._tgid.items())

    def new_task(self, tid: int, tgid: int) -> None:
        self._tgid[tid] = tgid

    def forget(self, tid: int) -> None:
        self._tgid.pop(tid, None)
