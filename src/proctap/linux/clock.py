"""The clocks the kernel stamps with, and conversions between them.

Events carry CLOCK_MONOTONIC (``ktime_get_ns``); /proc/PID/stat gives the start time in clock ticks (``CLOCK_TICKS``
per second) since boot (CLOCK_BOOTTIME, fs/proc/array.c).  The offsets between the clocks are sampled once per watcher.
"""

from __future__ import annotations

import os
import time

__all__ = ["CLOCK_TICKS", "Clock"]

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
