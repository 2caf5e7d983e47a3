"""A CLOCK_MONOTONIC timerfd (timerfd_create(2)) through libc: ``os.timerfd_*`` needs Python 3.13.

A descriptor that polls readable when the timer expires: it lets a backend whose work is time-driven (periodic /proc
scans, records held back for ordering) sit in the same poll set as event sources.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import time
from types import TracebackType

from . import libc

__all__ = ["TimerFd"]

# include/uapi/linux/timerfd.h: TFD_CLOEXEC = O_CLOEXEC, TFD_NONBLOCK = O_NONBLOCK; TFD_TIMER_ABSTIME = 1.
_TFD_FLAGS = os.O_CLOEXEC | os.O_NONBLOCK
_TFD_TIMER_ABSTIME = 1
_NS = 1_000_000_000


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


_timerfd_create = libc.function("timerfd_create", (ctypes.c_int, ctypes.c_int))
_timerfd_settime = libc.function(
    "timerfd_settime", (ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p)
)


def _timespec(ns: int) -> _Timespec:
    sec, nsec = divmod(ns, _NS)
    return _Timespec(sec, nsec)


class TimerFd:
    """A non-blocking, close-on-exec CLOCK_MONOTONIC timerfd, created disarmed.

    Arm it with :meth:`arm_at` (one absolute expiry) or :meth:`arm_every` (periodic).  Failures raise ``OSError``
    (ENOSYS when the C library lacks timerfd).  ``fileno()``, ``close()`` (idempotent) and ``with`` work as on files.
    """

    def __init__(self) -> None:
        if _timerfd_create is None or _timerfd_settime is None:
            raise OSError(errno.ENOSYS, "the C library has no timerfd_create")
        self.fd = libc.call(_timerfd_create, time.CLOCK_MONOTONIC, _TFD_FLAGS)
        self._armed = False

    def fileno(self) -> int:
        if self.fd < 0:
            raise ValueError("timerfd is closed")
        return self.fd

    def arm_at(self, when_ns: int | None) -> None:
        """Expire once at ``when_ns`` (CLOCK_MONOTONIC ns, as ``time.monotonic_ns``), or disarm with None.

        An expiry already pending is cleared first, so the descriptor is readable only once the new time has come.
        A time in the past expires at once (0 would disarm: it is raised to 1 ns).
        """
        self.expirations()
        if when_ns is None and not self._armed:
            return
        spec = _Itimerspec()
        if when_ns is not None:
            spec.it_value = _timespec(max(when_ns, 1))
        self._settime(_TFD_TIMER_ABSTIME, spec)
        self._armed = when_ns is not None

    def arm_every(self, interval_ns: int) -> None:
        """Expire every ``interval_ns`` nanoseconds (> 0), the first time one interval from now."""
        period = _timespec(interval_ns)
        self._settime(0, _Itimerspec(period, period))
        self._armed = True

    def expirations(self) -> int:
        """How many expiries since the last call (0: none); clears the readable state."""
        try:
            return int.from_bytes(os.read(self.fd, 8), "little")
        except BlockingIOError:
            return 0

    def _settime(self, flags: int, spec: _Itimerspec) -> None:
        libc.call(_timerfd_settime, self.fd, flags, ctypes.byref(spec), None)

    def close(self) -> None:
        """Close the descriptor; later calls do nothing."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def __enter__(self) -> TimerFd:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
