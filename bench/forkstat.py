"""forkstat as the reference monitor: parse its output into the benchmark's event columns.

forkstat (0.03, drivers/connector proc connector, default socket buffer) prints one line per event, e.g.::

    01:19:47 fork   7785 parent          bash /dev/fd/3
    01:19:47 fork   7791 child           sh
    01:19:47 clone  7792 parent          python3 ...
    01:19:47 clone  7834 thread          python3 ...
    01:19:47 exec   7791                 sh
    01:19:47 exit   7791    768   0.000s sh          (768: the raw wait status, exit(3))
    01:19:47 recv ----- nobufs          (No buffer space available)

What forkstat does *not* give reliably: the parent of a fork (it reads /proc/CHILD/status; once the child is gone it
prints parent 0 and cannot tell a thread from a process), the process of an exiting thread, any count of the
events it lost (one "nobufs" line per overflow).  The columns use -1 for "unknown" and the scorer accepts it.
"""

from __future__ import annotations

from typing import Any

from score import COLUMNS

EVENTS = "fork,exec,exit,clone"  # clone: forkstat's name for thread creation


def empty_columns() -> dict[str, Any]:
    out: dict[str, Any] = {name: [] for name in COLUMNS}
    out["lost"] = []
    return out


# forkstat names the process of each event (from its /proc cache): the storm's tasks show the loadgen's command
# line, or "<unknown>" when forkstat could not read it in time.  Events naming anything else are another process's
# (PIDs are reused: matching by PID alone would count them for the storm).
STORM_NAMES = ("loadgen", "<unknown>")


def parse(text: str, names: tuple[str, ...] = STORM_NAMES) -> dict[str, Any]:
    """forkstat's stdout -> event columns (see bench/score.py) plus ``nobufs`` (overflow lines).

    Only events whose process column contains one of ``names`` are kept (fork parent lines always are).
    """
    cols = empty_columns()
    nobufs = 0
    parent = -1
    for line in text.splitlines():
        fields = line.split(None, 4)
        if len(fields) < 3 or fields[0] == "Time":
            continue
        kind = fields[1]
        if kind == "recv":
            nobufs += "nobufs" in line
            continue
        try:
            pid = int(fields[2])
        except ValueError:
            continue
        info = fields[3] if len(fields) > 3 else ""
        if kind in ("fork", "clone") and info == "parent":
            parent = pid
            continue
        if not any(name in line for name in names):
            parent = -1
            continue
        if kind in ("fork", "clone"):
            is_thread = info == "thread"
            # parent 0: forkstat found the child gone from /proc; its thread/process call is then a guess
            thread_flag = -1 if parent <= 0 else int(is_thread)
            cols["f_tid"].append(pid)
            cols["f_pid"].append(parent if is_thread else pid)
            cols["f_ppid"].append(parent if parent > 0 else -1)
            cols["f_thread"].append(thread_flag)
            parent = -1
        elif kind == "exec":
            cols["e_tid"].append(pid)
            cols["e_pid"].append(pid)
            cols["e_ppid"].append(-1)
        elif kind == "exit":
            cols["x_tid"].append(pid)
            cols["x_pid"].append(-1)
            cols["x_ppid"].append(-1)
            cols["x_status"].append(int(info) if info.lstrip("-").isdigit() else -1)
            cols["x_thread"].append(-1)
    cols["lost"] = [[None, "forkstat nobufs", None]] * nobufs
    cols["nobufs"] = nobufs
    return cols
