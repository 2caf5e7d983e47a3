"""Reading a tracefs instance: per-CPU ``trace_pipe_raw`` pages, merged in timestamp order, with loss accounting.

I/O lives here; decoding is :func:`.ring.decode_page` and :class:`.format.RecordDecoder`.
"""

from __future__ import annotations

import contextlib
import os
import select
import struct
import time
import weakref
from collections.abc import Iterator
from operator import itemgetter

from ...errors import ProctapError
from ..timerfd import TimerFd
from .format import PageLayout
from .instance import Instance, find_tracefs, remove_stale_instances
from .ring import decode_page

__all__ = ["Loss", "Record", "TraceReader", "read_pages"]

Record = tuple[int, int, bytes, int, int]
"""``(timestamp_ns, event type id, page bytes, payload start, payload length)``."""

Loss = tuple[int, int | None]
"""``(cpu, count)``: events the kernel overwrote before we read them; count None when it did not say."""

_TYPE_ID = struct.Struct("=H")

DEFAULT_BUFFER_KB = 2048  # per CPU
_timestamp = itemgetter(0)


def _close_all(instance: Instance, epoll: select.epoll | None, timer: TimerFd | None = None) -> None:
    if epoll is not None:
        with contextlib.suppress(OSError):
            epoll.close()
    if timer is not None:
        timer.close()
    instance.remove()


HOLD_NS = 2_000_000
"""How long after its timestamp a record may still be uncommitted: the ring buffer writes between reserve (which
stamps) and commit with preemption off, so only interrupts (or a preempted vCPU) stretch it."""



def read_pages(fd: int, page_size: int) -> Iterator[bytes]:
    """The sub-buffer pages ready in one per-CPU ``trace_pipe_raw`` (opened non-blocking): one page per read,
    until the kernel has no more."""
    while True:
        try:
            buf = os.read(fd, page_size)
        except BlockingIOError:
            return
        if not buf:
            return
        yield buf

class TraceReader:
    """A private instance configured for low-cost reading: ``buffer_percent`` 0 (poll wakes on any data; the
    caller batches by sleeping between non-empty drains), ``trace_clock`` mono (timestamps are CLOCK_MONOTONIC ns,
    as ``time.monotonic_ns``), a per-CPU buffer of ``buffer_kb``.

    Make it, enable events on ``.instance``, then :meth:`start`.  :meth:`close` (also run on garbage collection
    and at interpreter exit) removes the instance.
    """

    def __init__(self, buffer_kb: int | None = None, prefix: str = "proctap") -> None:
        root = find_tracefs()
        if root is None:
            from ...errors import BackendUnavailable

            raise BackendUnavailable("tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing (needs root)")
        self.stale_removed = remove_stale_instances(root, prefix)
        self.instance = Instance(root, prefix)
        self._epoll: select.epoll | None = None
        self._timer: TimerFd | None = None
        self._held: list[Record] = []
        self._finalizer = weakref.finalize(self, _close_all, self.instance, None)
        try:
            self._configure(buffer_kb)
        except BaseException:
            self.close()
            raise
        self.pages_read = 0
        self.records_read = 0
        self.lost_reported: dict[int, int] = dict.fromkeys(self.cpus, 0)
        self.lost_unknown = 0

    def _configure(self, buffer_kb: int | None) -> None:
        inst = self.instance
        inst.write("tracing_on", "0")
        inst.write("buffer_size_kb", str(buffer_kb or DEFAULT_BUFFER_KB))
        inst.write("buffer_percent", "0")
        inst.set_trace_clock("mono")
        self.layout: PageLayout = inst.page_layout()
        inst.header_layout()  # refuses a header layout the page decoder does not know
        self.cpus = inst.cpus()

    def start(self) -> None:
        """Open the pipes and turn tracing on."""
        inst = self.instance
        inst.open_pipes(self.cpus)
        self._epoll = inst.epoll()
        if len(self.cpus) > 1:
            try:
                self._timer = TimerFd()
            except OSError as exc:
                raise ProctapError(f"timerfd_create failed: {exc.strerror}") from None
            self._epoll.register(self._timer.fileno(), select.EPOLLIN)
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _close_all, inst, self._epoll, self._timer)
        inst.write("tracing_on", "1")

    def fileno(self) -> int:
        if self._epoll is None:
            raise ValueError("TraceReader not started")
        return self._epoll.fileno()

    @property
    def held(self) -> list[Record]:
        """Records read but held back until the next :meth:`read` (all later than those it returned)."""
        return self._held

    def read(self) -> tuple[list[Record], list[Loss]]:
        """Records of every CPU, in timestamp order, up to a watermark; and the losses.

        The CPUs are read one after the other, so a record stamped just before the read of one CPU can be
        committed after that read and arrive with the next drain, behind later records of another CPU (a fork
        read after the exit of the child, which ran on the other CPU).  So records stamped within ``HOLD_NS`` of
        the start of this drain are held back until the next one, where they are merged in order; a timer (in
        the epoll set) makes ``fileno()`` readable when the held records are due.
        """
        watermark = time.monotonic_ns() - HOLD_NS
        records: list[Record] = self._held
        losses: list[Loss] = []
        page_size = self.layout.page_size
        layout = self.layout
        type_id = _TYPE_ID.unpack_from
        for cpu, fd in self.instance.pipes.items():
            for buf in read_pages(fd, page_size):
                self.pages_read += 1
                page = decode_page(buf, layout)
                if page.missed is not None:
                    losses.append(self._loss(cpu, page.missed))
                for ts, start, length in page.records:
                    if length >= 2:
                        records.append((ts, type_id(buf, start)[0], buf, start, length))
        if self._timer is None:  # one CPU: its records come in order
            self._held = []
            self.records_read += len(records)
            return records, losses
        records.sort(key=_timestamp)
        cut = len(records)
        while cut and records[cut - 1][0] >= watermark:
            cut -= 1
        self._held = records[cut:]
        try:
            self._timer.arm_at(self._held[0][0] + HOLD_NS + 1 if self._held else None)
        except OSError as exc:
            raise ProctapError(f"timerfd_settime failed: {exc.strerror}") from None
        ready = records[:cut]
        self.records_read += len(ready)
        return ready, losses

    def _loss(self, cpu: int, missed: int) -> Loss:
        if missed >= 0:
            self.lost_reported[cpu] = self.lost_reported.get(cpu, 0) + missed
            return cpu, missed
        # the page says events were lost but had no room for the count: the per-CPU overrun counter has it
        with contextlib.suppress(OSError):
            overrun = self.instance.cpu_stats(cpu).get("overrun", 0)
            count = overrun - self.lost_reported.get(cpu, 0)
            if count > 0:
                self.lost_reported[cpu] = overrun
                return cpu, count
        self.lost_unknown += 1
        return cpu, None

    def stats(self) -> dict[str, int]:
        out = {
            "cpus": len(self.cpus),
            "pages_read": self.pages_read,
            "records_read": self.records_read,
            "lost_reported": sum(self.lost_reported.values()),
            "lost_unknown": self.lost_unknown,
        }
        if not self.instance.removed:
            with contextlib.suppress(OSError, ValueError):
                out["buffer_kb_per_cpu"] = int(self.instance.read("buffer_size_kb").split()[0])
                out["overrun"] = sum(self.instance.cpu_stats(c).get("overrun", 0) for c in self.cpus)
        return out

    def close(self) -> None:
        self._finalizer()

    @property
    def closed(self) -> bool:
        return self.instance.removed
