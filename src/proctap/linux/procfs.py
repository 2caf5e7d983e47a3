"""Reading what /proc tells about a task *after* an event (used to enrich events the kernel reports bare).

Every function returns ``None`` when the task is gone or the file unreadable: /proc races with the task.
"""

from __future__ import annotations

import os

__all__ = ["descendants", "list_pids", "read_argv", "read_comm", "read_exe", "read_ppid"]


def read_argv(pid: int) -> tuple[str, ...] | None:
    """argv of the process as a tuple (empty arguments kept, non-UTF-8 bytes as surrogate escapes).

    An empty cmdline (kernel threads, zombies) gives ``None``.
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            data = f.read()
    except OSError:
        return None
    if not data:
        return None
    if data.endswith(b"\0"):
        data = data[:-1]
    return tuple(os.fsdecode(arg) for arg in data.split(b"\0"))


def read_exe(pid: int) -> str | None:
    """The path of the executable (readlink of /proc/PID/exe)."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def read_comm(pid: int, tid: int | None = None) -> str | None:
    """The task's comm (at most 15 characters)."""
    path = f"/proc/{pid}/comm" if tid is None or tid == pid else f"/proc/{pid}/task/{tid}/comm"
    try:
        with open(path, "rb") as f:
            return os.fsdecode(f.read().rstrip(b"\n"))
    except OSError:
        return None


def _stat_field(pid: int, index: int) -> int | None:
    """Field ``index`` of /proc/PID/stat counted from field 3 (the one after the parenthesised comm, which may hold
    spaces and parentheses itself), as an int."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        return int(data[data.rfind(b")") + 2 :].split()[index])
    except (IndexError, ValueError):
        return None


def read_ppid(pid: int) -> int | None:
    """The parent's pid, from /proc/PID/stat (field 4)."""
    return _stat_field(pid, 1)


def read_start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (/proc/PID/stat field 22, starttime)."""
    return _stat_field(pid, 19)


def process_alive(pid: int, start_ticks: int) -> bool:
    """Whether ``pid`` still is the process that started at ``start_ticks`` (not gone, not a reused pid)."""
    return read_start_ticks(pid) == start_ticks


def descendants(pid: int) -> set[int]:
    """The pids of the live descendants of ``pid`` (children, grandchildren...), from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            child = int(name)
            ppid = read_ppid(child)
            if ppid is not None:
                children.setdefault(ppid, []).append(child)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def list_pids() -> list[int]:
    """The pids of every live process (the numeric entries of /proc)."""
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]
