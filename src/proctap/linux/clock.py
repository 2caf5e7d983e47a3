"""Clocks and per-task facts from /proc, shared by the backends.

The kernel stamps events with CLOCK_MONOTONIC (``ktime_get_ns``); /proc/PID/stat gives the start time in clock ticks
since boot (CLOCK_BOOTTIME, fs/proc/array.c).  The offsets between the clocks are sampled once per watcher.
"""

from __future__ import annotations

import os
import time

__all__ = [
    "CLOCK_TICKS",
    "Clock",
    "proc_start_ns",
]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Clock:
    """Converts kernel CLOCK_MONOTONIC nanoseconds to wall time and to nanoseconds since boot."""

    __slots__ = ("boot_offset_ns", "wall_offset_ns")

    def __init__(self) -> None:
        mono = time.monotonic_ns()
        self.wall_offset_ns = time.time_ns() - mono
        self.boot_offset_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - mono

    def wall_time(self, monotonic_ns: int) -> float:
        """Seconds since the epoch for a CLOCK_MONOTONIC instant."""
        return (monotonic_ns + self.wall_offset_ns) / 1e9

    def since_boot(self, monotonic_ns: int) -> int:
        """Nanoseconds since boot (CLOCK_BOOTTIME) for a CLOCK_MONOTONIC instant."""
        return monotonic_ns + self.boot_offset_ns

    def monotonic(self, boot_ns: int) -> int:
        """CLOCK_MONOTONIC nanoseconds for a CLOCK_BOOTTIME instant."""
        return boot_ns - self.boot_offset_ns


def proc_start_ns(pid: int, tid: int | None = None) -> int | None:
    """Start time of a task in nanoseconds since boot, from /proc (clock-tick precision), or None if it is gone."""
    path = f"/proc/{pid}/stat" if tid is None or tid == pid else f"/proc/{pid}/task/{tid}/stat"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The comm field (2nd) may contain spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(b")") + 2 :].split()
    try:
        ticks = int(rest[19])  # field 22 (starttime); rest starts at field 3
    except (IndexError, ValueError):
        return None
    return ticks * 1_000_000_000 // CLOCK_TICKS
